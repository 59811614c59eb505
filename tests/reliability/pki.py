"""A throw-away PKI made with the openssl command: a CA, a server and a client certificate it signed, and
a client certificate from another CA (which the node must not trust)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    rogue_certificate: Path
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, certificate = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(certificate))
    return certificate, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    key, request, certificate = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key),
             "-out", str(request))
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(certificate))
    return certificate, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, rogue_ca = _ca(folder, "ca"), _ca(folder, "rogue-ca")
    server = _signed(folder, "server", ca, "serverAuth")
    client = _signed(folder, "client", ca, "clientAuth")
    rogue = _signed(folder, "rogue", rogue_ca, "clientAuth")
    return Pki(ca[0], *server, *client, *rogue)
