#!/usr/bin/env python3
"""Puts buckets, objects and IAM users into a moto server for tests/source_s3.rs.

Reads one JSON document on stdin:

    {
      "endpoint": "http://127.0.0.1:PORT",
      "buckets": [{"name": "fns", "versioning": false}],
      "objects": [{"bucket": "fns", "key": "hello.py", "data": "<base64>"}],
      "users":   [{"name": "reader", "policy": {...IAM policy document...} | null}]
    }

and writes one JSON document on stdout:

    {
      "objects": [{"bucket": ..., "key": ..., "etag": "HEX", "version_id": "..." | null}],
      "users": {"reader": {"access_key_id": ..., "secret_access_key": ...}}
    }

It must run while moto does not authenticate requests (the Rust fixture turns
authentication off around it): the setup credentials below are not an IAM user's.
Only 127.0.0.1 is ever contacted: the endpoint is checked, the credentials and the
region are explicit, and the instance metadata service is disabled.
"""

import base64
import json
import os
import sys
from urllib.parse import urlparse


def main() -> int:
    spec = json.load(sys.stdin)
    endpoint = spec["endpoint"]
    if urlparse(endpoint).hostname != "127.0.0.1":
        print(f"refusing a non-local endpoint: {endpoint}", file=sys.stderr)
        return 2

    # Nothing from the developer's AWS setup, and never the instance metadata service.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_CONFIG_FILE"] = "/nonexistent"
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    # Straight to 127.0.0.1, never through a proxy.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(name, None)
        os.environ.pop(name.lower(), None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id="fnbuild-test-setup",
        aws_secret_access_key="fnbuild-test-setup-secret",
        region_name="us-east-1",
    )
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 2, "mode": "standard"},
        proxies={},
    )
    s3 = session.client("s3", endpoint_url=endpoint, config=config)
    iam = session.client("iam", endpoint_url=endpoint, config=config)

    for bucket in spec.get("buckets", []):
        s3.create_bucket(Bucket=bucket["name"])
        if bucket.get("versioning"):
            s3.put_bucket_versioning(
                Bucket=bucket["name"],
                VersioningConfiguration={"Status": "Enabled"},
            )

    objects = []
    for obj in spec.get("objects", []):
        answer = s3.put_object(
            Bucket=obj["bucket"],
            Key=obj["key"],
            Body=base64.b64decode(obj["data"]),
        )
        objects.append(
            {
                "bucket": obj["bucket"],
                "key": obj["key"],
                "etag": answer["ETag"].strip('"'),
                "version_id": answer.get("VersionId"),
            }
        )

    users = {}
    for user in spec.get("users", []):
        iam.create_user(UserName=user["name"])
        if user.get("policy") is not None:
            iam.put_user_policy(
                UserName=user["name"],
                PolicyName=f"{user['name']}-policy",
                PolicyDocument=json.dumps(user["policy"]),
            )
        key = iam.create_access_key(UserName=user["name"])["AccessKey"]
        users[user["name"]] = {
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
        }

    json.dump({"objects": objects, "users": users}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
