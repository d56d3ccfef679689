"""moto's S3 server on 127.0.0.1 for the tests that need a real S3 endpoint (remotes, run storage,
leases), and a sandbox that hides this machine's AWS settings from them.

The server checks signatures (moto's IAM authentication is switched on once the bucket and a
user exist), so wrong keys are refused as AWS refuses them and anonymous access fails. Its keys
are moto's fakes. A test module uses both fixtures by importing them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import pytest

from pipeline.cluster.remote import AWS_ENV_VARS
from tests.conftest import VENV_BIN

BUCKET = "csada-data"
REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    endpoint: str
    key_id: str
    secret: str

    def client(self):
        import boto3

        return boto3.Session(aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                             region_name=REGION).client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(scope="module", autouse=True)
def aws_sandbox(tmp_path_factory):
    """Hide this machine's AWS and DVC settings from every test of the module."""
    home = tmp_path_factory.mktemp("aws")
    (home / "credentials").write_text("")
    (home / "config").write_text("")
    with pytest.MonkeyPatch.context() as patch:
        for key in (*AWS_ENV_VARS, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(key, raising=False)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        patch.setenv("AWS_CONFIG_FILE", str(home / "config"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup (and no wait for one)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        for key in ("DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR", "DVC_SITE_CACHE_DIR"):
            patch.setenv(key, str(tmp_path_factory.mktemp(key.lower())))
        patch.setenv("DVC_NO_ANALYTICS", "1")
        patch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
        for role in ("AUTHOR", "COMMITTER"):
            patch.setenv(f"GIT_{role}_NAME", "t")
            patch.setenv(f"GIT_{role}_EMAIL", "t@example.com")
        yield


@pytest.fixture(scope="module")
def s3(aws_sandbox):
    """moto's S3 on loopback with one bucket and one user allowed s3:*, then signatures enforced."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        # moto's backends are process-wide: when xdist runs this module's tests apart, the fixture is
        # set up again in the same process, and the user and bucket of the last time are still there.
        requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
        setup = boto3.Session(aws_access_key_id="setup", aws_secret_access_key="setup", region_name=REGION)
        iam = setup.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="pipeline")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="pipeline", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        setup.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        yield MotoS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        # The switch is process-wide in moto: leave it off for whatever runs next.
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        server.stop()
