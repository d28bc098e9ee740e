"""An S3-compatible server for the tests: moto's server mode on 127.0.0.1, on a free port.

moto answers S3's REST API in-process (a thread of the test process), so boto3 clients in the
tests and in the servers they start talk real HTTP to it over loopback. :func:`reset` empties
every bucket between tests.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""moto accepts any credentials; these keep boto3 away from a real profile or instance role."""


@dataclass
class MotoS3:
    endpoint: str
    server: ThreadedMotoServer
    stopped: bool = False

    def environment(self) -> dict[str, str]:
        """The AWS configuration chain's variables that point boto3 (and tuneforge) at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def stop(self) -> None:
        """Shut the server down: its port on loopback is closed from here on (an unreachable endpoint)."""
        if not self.stopped:
            self.stopped = True
            self.server.stop()
            listening = self.server._server  # moto's stop() ends serve_forever but leaves the socket listening
            if listening is not None:
                listening.server_close()

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


@contextmanager
def moto_s3() -> Iterator[MotoS3]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = MotoS3(f"http://{host}:{port}", server)
    try:
        yield moto
    finally:
        moto.stop()
