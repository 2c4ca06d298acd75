"""Create the object store's bucket if it is missing (the bucket Job runs this in the platform image).

Reads MODELYARD_STORE_URI (s3://BUCKET[/prefix]), AWS_ENDPOINT_URL and the AWS_* keys, the variables every
platform pod gets. Retries while the S3 gateway starts, so it may run as soon as the Job is created.
"""

import os
import sys
import time
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

bucket = urlparse(os.environ["MODELYARD_STORE_URI"]).netloc
client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
deadline = time.monotonic() + float(os.environ.get("BUCKET_WAIT_SECONDS", "300"))
while True:
    try:
        client.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket}")
        break
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            print(f"bucket {bucket} exists")
            break
        error = exc
    except BotoCoreError as exc:
        error = exc
    if time.monotonic() > deadline:
        sys.exit(f"cannot create bucket {bucket}: {error}")
    time.sleep(2)
