"""Poll a health URL while the benchmark loads the server, like a kubelet probe: one new connection each.

    python bench/serving/probe.py URL --max-probes 200 --interval-ms 20 --delay-s 0.5 --deadline-s 5

Starts after ``--delay-s`` (the load ramps up meanwhile); stops after ``--max-probes`` probes or
once ``--deadline-s`` (counted from the start) has passed, whichever comes first, and prints
one JSON line: each probe's latency in ms (a failed or timed-out probe counts as a failure, with the time
it took). Standard library only, so any interpreter can run it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import urllib.parse


def probe_once(host: str, port: int, path: str, timeout_s: float) -> tuple[float, bool]:
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    finally:
        connection.close()
    return (time.perf_counter() - start) * 1000.0, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--max-probes", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--delay-s", type=float, default=0.0, help="wait this long before the first probe")
    parser.add_argument("--deadline-s", type=float, default=5.0, help="stop probing this long after start")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    deadline = time.monotonic() + args.deadline_s
    time.sleep(args.delay_s)
    latencies: list[float] = []
    failures = 0
    while len(latencies) < args.max_probes and time.monotonic() < deadline:
        latency, ok = probe_once(host, port, url.path, args.timeout_s)
        latencies.append(latency)
        failures += not ok
        time.sleep(args.interval_ms / 1000.0)
    print(json.dumps({"latencies_ms": latencies, "failures": failures}))


if __name__ == "__main__":
    main()
