"""helm test: wait until the model is ready, then send it one V2 inference request built from its metadata.

One row with a value of each input's datatype (0.0 for numbers, "a" for strings) is enough to prove the
whole path: the storage initializer fetched the bundle, the server verified and loaded it, and it answers.
Exits non-zero, naming what failed, otherwise.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

base = os.environ["MODEL_URL"].rstrip("/")
name = os.environ["MODEL_NAME"]
deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "120"))


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read() or b"null")


while True:
    try:
        status, _ = call(f"/v2/models/{name}/ready")
        if status == 200:
            break
        problem = f"status {status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(exc)
    if time.monotonic() > deadline:
        sys.exit(f"model {name} at {base} not ready: {problem}")
    time.sleep(1)

_, metadata = call(f"/v2/models/{name}")
values = {"FP64": 0.0, "FP32": 0.0, "INT64": 0, "INT32": 0, "BOOL": False, "BYTES": "a"}
inputs = [
    {
        "name": tensor["name"],
        "datatype": tensor["datatype"],
        "shape": [1],
        "data": [values[tensor["datatype"]]],
    }
    for tensor in metadata["inputs"]
]
status, answer = call(f"/v2/models/{name}/infer", {"inputs": inputs})
outputs = {output["name"]: output for output in answer.get("outputs", [])}
if status != 200 or not outputs:
    sys.exit(f"inference on {name} failed: {status} {answer}")
print(f"{name}: ready, and one V2 inference answered {sorted(outputs)}")
