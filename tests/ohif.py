"""The OHIF Viewer (the built ``@ohif/app`` from the npm registry) served on loopback for the tests.

``scripts/bootstrap.sh`` unpacks the package's ``dist/`` into ``.venv/share/ohif``
(``XIQA_OHIF_DIST`` points elsewhere).  :func:`serving_ohif` serves that folder,
with ``index.html`` for the viewer's own routes (``/viewer?...``), an
``app-config.js`` of ours instead of the shipped one, and ``/dicom-web/...``
passed through to Orthanc's DICOMweb plugin, so that the viewer and its data
share one origin (Orthanc sends no CORS headers).
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

OHIF_VERSION = "3.13.2"
OHIF_DIST = Path(os.environ.get("XIQA_OHIF_DIST") or
                 Path(__file__).resolve().parents[1] / ".venv" / "share" / "ohif" / "dist")
requires_ohif = pytest.mark.skipif(
    not (OHIF_DIST / "index.html").is_file(),
    reason=f"OHIF not unpacked in {OHIF_DIST} (scripts/bootstrap.sh: npm pack @ohif/app@{OHIF_VERSION})")

DATA_SOURCE = "orthanc"


def app_config(extra: dict | None = None) -> str:
    """OHIF's ``window.config``: one DICOMweb data source on this origin, nothing remote."""
    config = {
        "routerBasename": "/",
        "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": DATA_SOURCE,
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": DATA_SOURCE,
            "configuration": {
                "friendlyName": "xiqa test Orthanc",
                "name": DATA_SOURCE,
                "wadoUriRoot": "/dicom-web",
                "qidoRoot": "/dicom-web",
                "wadoRoot": "/dicom-web",
                "qidoSupportsIncludeField": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "staticWado": False,
                "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True},
                "omitQuotationForMultipartRequest": True,
            },
        }],
        **(extra or {}),
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _OhifServer

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/"):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, self.server.config.encode(), "application/javascript")
        else:
            self._static(path)

    def _proxy(self) -> None:
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() in ("accept", "range")}
        request = urllib.request.Request(f"{self.server.orthanc}{self.path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                self._send(reply.status, reply.read(), reply.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            self._send(error.code, error.read(), error.headers.get("Content-Type", "text/plain"))
        self.server.dicomweb_requests.append(self.path)

    def _static(self, path: str) -> None:
        root = self.server.root
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # the viewer's own routes
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, target.read_bytes(), kind)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _OhifServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, orthanc: str, config: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.orthanc, self.config = root.resolve(), orthanc, config
        self.dicomweb_requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving_ohif(orthanc_http_port: int, extra_config: dict | None = None) -> Iterator[_OhifServer]:
    """Serve OHIF on a free loopback port, its DICOMweb calls going to Orthanc; yield the server."""
    server = _OhifServer(OHIF_DIST, f"http://127.0.0.1:{orthanc_http_port}", app_config(extra_config))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
