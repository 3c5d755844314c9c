"""A real S3-protocol server for the suite: moto's standalone server on a free loopback port, in a
thread of the test process (worker processes reach it over HTTP like any S3 endpoint)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# moto accepts any credentials; these only have to be present for botocore to sign requests.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "openft-test",
    "AWS_SECRET_ACCESS_KEY": "openft-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint_url)

    def new_bucket(self) -> str:
        name = "openft-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name


def start() -> Iterator[S3Server]:
    """Start the server (skipping the test when moto is not installed), yield it, stop it."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"moto[server] is not installed (pip install -e '.[test]'): {exc}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
