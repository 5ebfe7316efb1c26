"""TLS material for tests, made by openssl in a folder: a CA (`ca.pem`), a server
certificate for 127.0.0.1 (`server.pem`, `server.key`) and a client certificate
(`client.pem`, `client.key`), each valid for two days."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.programs import need


def certificates(directory: Path) -> None:
    """Make the CA and the two certificates in `directory` (created here)."""
    need("openssl", "the test certificates cannot be made here")
    directory.mkdir(parents=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=baton-test-ca")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            *(["-extfile", "san.ext"] if name == "server" else []))  # fmt: skip
