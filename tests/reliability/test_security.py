"""Security of the node: TLS only, mutual TLS, allow-lists, forwarding over TLS to dcmtk's storescp,
the metrics bind address, and one audit line per connection (UIDs and AE titles only)."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from orthanc import free_port
from pki import make_pki
from pydicom import dcmread
from serve_helpers import echo, send
from support import phi_hits
from xiqa.cli import build_parser
from xiqa.service.listener import SUCCESS, forward_tls_context
from xiqa.service.metrics import NodeMetrics
from xiqa.service.outbox import Outbox
from xiqa.service.settings import Destination, settings_from_mapping

pytestmark = [pytest.mark.reliability,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client(pki, certificate: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(key))
    return context


def _audit_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "xiqa.audit"]


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(listening, pki, caplog):
    caplog.set_level(logging.INFO, logger="xiqa.audit")
    listener, *_ = listening(tls_certificate=pki.server_certificate, tls_key=pki.server_key, tls_ca=pki.ca)
    assert echo(listener.port, ssl_context=_client(pki, pki.client_certificate, pki.client_key))
    assert not echo(listener.port, ssl_context=_client(pki))  # no client certificate
    assert not echo(listener.port, ssl_context=_client(pki, pki.rogue_certificate, pki.rogue_key))
    assert not echo(listener.port)  # TLS only: plain DICOM gets nowhere
    assert echo(listener.port, ssl_context=_client(pki, pki.client_certificate, pki.client_key))
    time.sleep(0.5)  # the last connection's close is logged by its own thread
    lines = _audit_lines(caplog)
    accepted = [line for line in lines if ": released after" in line]
    assert len(accepted) == 2 and all("(TLS) called XIQA" in line and "echoes 1" in line for line in accepted)
    assert sum("closed before an association" in line for line in lines) == 3


def test_audit_names_caller_address_and_outcome_of_every_association(listening, canary_sources, caplog):
    caplog.set_level(logging.INFO, logger="xiqa.audit")
    listener, *_ = listening(allowed_ae_titles=("CR_ROOM_1",))
    assert send(listener.port, canary_sources[:2], calling="CR_ROOM_1") == [SUCCESS, SUCCESS]
    with pytest.raises(ConnectionError):
        send(listener.port, canary_sources[:1], calling="INTRUDER")
    by_host, *_ = listening(allowed_hosts=("10.99.99.99",))
    assert not echo(by_host.port)
    time.sleep(0.5)
    lines = _audit_lines(caplog)
    study = str(dcmread(canary_sources[0], stop_before_pixels=True).StudyInstanceUID)
    stored = [line for line in lines if line.startswith("audit: CR_ROOM_1 at 127.0.0.1:")]
    assert len(stored) == 1 and f"stored 2 (study {study}: 2); refused 0" in stored[0]
    assert any(line.startswith("audit: INTRUDER at 127.0.0.1:") and line.endswith(
        "association rejected (calling AE title not allowed)") for line in lines)
    assert any("connection closed (address not on the allowed host list)" in line for line in lines)
    assert phi_hits(texts=lines) == []


def _wait_listening(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "storescp exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "storescp is not listening"
            time.sleep(0.2)


@pytest.mark.skipif(shutil.which("storescp") is None, reason="needs dcmtk's storescp")
def test_forwarding_over_tls_from_the_config_reaches_a_tls_storescp(pki, canary_sources, tmp_path):
    port, received = free_port(), tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen(
        ["storescp", "+tls", str(pki.server_key), str(pki.server_certificate), "+cf", str(pki.ca), "-rc",
         "-od", str(received), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, storescp)
        values = {"storage": str(tmp_path / "s"), "output": str(tmp_path / "o"),
                  "forward": [f"STORESCP@127.0.0.1:{port}"], "forward-tls": True,
                  "forward-tls-ca": str(pki.ca), "forward-tls-certificate": str(pki.client_certificate),
                  "forward-tls-key": str(pki.client_key)}
        settings = settings_from_mapping(values, "xiqa.toml")
        metrics = NodeMetrics()
        outbox = Outbox(tmp_path / "outbox", settings.forward, calling_ae_title="XIQA", metrics=metrics,
                        retries=0, ssl_context=forward_tls_context(settings))
        outbox.enqueue([canary_sources[0]])
        outbox.start()
        assert outbox.wait_empty(60)
        outbox.stop()
        assert metrics.registry.get_sample_value("xiqa_forwarded_total", {
            "destination": str(settings.forward[0])}) == 1
        sop = str(dcmread(canary_sources[0], stop_before_pixels=True).SOPInstanceUID)
        assert [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in received.iterdir()] == [sop]
        # the same destination without TLS: the attempt fails, nothing more arrives
        plain = Outbox(tmp_path / "plain-outbox", [Destination("STORESCP", "127.0.0.1", port)],
                       calling_ae_title="XIQA", metrics=metrics, retries=0, retry_delay=0.1)
        plain.enqueue([canary_sources[1]])
        plain.start()
        assert plain.wait_empty(60)
        plain.stop()
        assert len(list((tmp_path / "plain-outbox" / "failed").glob("*.json"))) == 1
        assert len(list(received.iterdir())) == 1
    finally:
        storescp.terminate()
        storescp.wait(timeout=20)
    flags = build_parser().parse_args(["serve", "--forward-tls", "--forward-tls-ca", str(pki.ca)])
    assert flags.forward_tls is True and flags.forward_tls_ca == pki.ca


def test_metrics_endpoint_binds_to_loopback_only(tmp_path):
    port = free_port()
    NodeMetrics().serve(port, "127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "xiqa_instances_received_total 0.0" in body
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # another loopback address: not bound
        urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5)
    assert settings_from_mapping({"storage": "a", "output": "b"}, "defaults").metrics_bind == "127.0.0.1"
