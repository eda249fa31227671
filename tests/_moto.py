"""A real S3 protocol server on 127.0.0.1 for the archive tests: moto's
``ThreadedMotoServer`` with authentication on.

Set-up requests (the bucket, two IAM users and their policies) run before
authentication is turned on; from then on every request must be signed with a key
of a user whose policy allows it.  ``revoke()`` removes the archiver's policy
(requests then fail with AccessDenied, as after the seed's rotated keys) and
``restore()`` puts it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

BUCKET = "stemedb-archive"
REGION = "us-east-1"
_ALLOW_S3 = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
_ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    admin: dict[str, str]

    def s3(self, *, secret: str | None = None) -> Any:
        """An S3 client with the archiver's key (``secret``: a wrong one)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key_id,
                            aws_secret_access_key=secret or self.secret)

    def admin_s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.admin["id"],
                            aws_secret_access_key=self.admin["secret"])

    def _iam(self) -> Any:
        import boto3

        return boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.admin["id"],
                            aws_secret_access_key=self.admin["secret"])

    def revoke(self) -> None:
        self._iam().delete_user_policy(UserName="archiver", PolicyName="s3")

    def restore(self) -> None:
        self._iam().put_user_policy(UserName="archiver", PolicyName="s3",
                                    PolicyDocument=_ALLOW_S3)

    def env(self, monkeypatch: pytest.MonkeyPatch, tmp: str) -> None:
        """The archiver's environment: the usual AWS_* variables, no host files."""
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", self.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", self.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", self.secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp}/aws-config-none")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp}/aws-credentials-none")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def moto_s3_server() -> Iterator[S3Server]:
    """Start the server, set up bucket and users, turn authentication on; stop it."""
    import boto3
    import moto.settings
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        endpoint = f"http://{host}:{port}"
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        # moto keeps its users and buckets in the process: a server started by an
        # earlier test module would leave them behind.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset",
                                                      method="POST"), timeout=10).close()
        kw = {"endpoint_url": endpoint, "region_name": REGION,
              "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="archiver")
        key = iam.create_access_key(UserName="archiver")["AccessKey"]
        iam.put_user_policy(UserName="archiver", PolicyName="s3", PolicyDocument=_ALLOW_S3)
        iam.create_user(UserName="admin")
        akey = iam.create_access_key(UserName="admin")["AccessKey"]
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=_ALLOW_ALL)
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # authentication on from here
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"],
                       {"id": akey["AccessKeyId"], "secret": akey["SecretAccessKey"]})
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
        server.stop()
