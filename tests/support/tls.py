"""Test certificates made with the openssl command line: a CA and what it signs, plus bad ones.

``make_pki(dir)`` writes (PEM, RSA 2048):

- ``ca.crt`` / ``ca.key``: the test CA
- ``server.crt`` / ``server.key``: for ``localhost`` and ``127.0.0.1``, signed by the CA
- ``client.crt`` / ``client.key``: a client certificate (SAN ``client.test``) signed by the CA
- ``expired.crt`` / ``expired.key``: for localhost/127.0.0.1, signed by the CA, expired in 2020
- ``wronghost.crt`` / ``wronghost.key``: signed by the CA for ``other.example`` only
- ``selfsigned.crt`` / ``selfsigned.key``: for localhost/127.0.0.1, self-signed (untrusted)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_LOCAL_SANS = "DNS:localhost,IP:127.0.0.1"

_CA_CONF = """
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[ any ]
commonName = supplied
"""


@dataclass(frozen=True)
class PKI:
    """Paths of the test certificates (see the module docstring)."""

    dir: Path

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.crt("ca")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _csr(d: Path, name: str, cn: str, sans: str) -> None:
    _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
         "-out", f"{name}.csr", "-subj", f"/CN={cn}", "-addext", f"subjectAltName={sans}", cwd=d)


def _sign(d: Path, name: str, days: int = 30) -> None:
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days), "-copy_extensions",
         "copy", cwd=d)


def make_pki(d: Path) -> PKI:
    """Write the test CA and its certificates into ``d`` (created)."""
    d.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "30", "-subj", "/CN=tuner test CA", cwd=d)
    _csr(d, "server", "localhost", _LOCAL_SANS)
    _sign(d, "server")
    _csr(d, "client", "client.test", "DNS:client.test")
    _sign(d, "client")
    _csr(d, "wronghost", "other.example", "DNS:other.example")
    _sign(d, "wronghost")
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "selfsigned.key",
         "-out", "selfsigned.crt", "-days", "30", "-subj", "/CN=localhost",
         "-addext", f"subjectAltName={_LOCAL_SANS}", cwd=d)
    # an expired certificate needs explicit dates: `openssl ca` sets them
    (d / "newcerts").mkdir(exist_ok=True)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "ca.conf").write_text(_CA_CONF.format(dir=d))
    _csr(d, "expired", "localhost", _LOCAL_SANS)
    _run("ca", "-batch", "-config", "ca.conf", "-cert", "ca.crt", "-keyfile", "ca.key",
         "-in", "expired.csr", "-out", "expired.crt", "-startdate", "20200101000000Z",
         "-enddate", "20200102000000Z", "-notext", cwd=d)
    return PKI(d)
