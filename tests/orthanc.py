"""A real Orthanc for the tests: the Debian ``Orthanc`` server on loopback, with its own config and storage.

Each server gets a temporary configuration, storage and log under the folder
it is given, and loopback ports chosen free at run time (or the DICOM port the
caller picked, to bring a destination up on a port that was down).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
requires_orthanc = pytest.mark.skipif(
    ORTHANC is None, reason="Orthanc not installed (Debian package orthanc)")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
requires_orthanc_dicomweb = pytest.mark.skipif(
    ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
    reason="Orthanc's DICOMweb plugin not installed (Debian package orthanc-dicomweb)")
AE_TITLE = "ORTHANC"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """A running server: its ports and a JSON client for its REST API."""

    def __init__(self, http_port: int, dicom_port: int) -> None:
        self.http_port, self.dicom_port = http_port, dicom_port

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as reply:
            return json.loads(reply.read())

    def upload(self, path: Path) -> dict:
        """POST one DICOM file to the REST API (as a viewer's site would have received it)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances",
                                         data=Path(path).read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())

    def sop_instance_uids(self) -> set[str]:
        """The SOP Instance UIDs of every instance the server holds."""
        return {self.get(f"/instances/{iid}")["MainDicomTags"]["SOPInstanceUID"]
                for iid in self.get("/instances")}


@contextmanager
def running_orthanc(folder: Path, dicom_port: int | None = None,
                    lua: str | None = None, dicomweb: bool = False) -> Iterator[Orthanc]:
    """Start Orthanc with everything under ``folder``, yield it once its REST API answers, stop it.

    ``lua``: a Lua script Orthanc runs (its ``print`` lines go to ``folder/orthanc.log``).
    ``dicomweb`` loads the DICOMweb plugin (QIDO-RS, WADO-RS under ``/dicom-web/``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = {
        "Name": "xiqa-test", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"), "HttpPort": http_port,
        "DicomPort": dicom_port, "DicomAet": AE_TITLE, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": False},
        "DicomAlwaysAllowStore": True, "StorageCompression": False, "SaveJobs": False,
        "HttpThreadsCount": 4, "ConcurrentJobs": 1,
    }
    if lua is not None:
        (folder / "script.lua").write_text(lua)
        config["LuaScripts"] = [str(folder / "script.lua")]
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], cwd=folder,
                               stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(http_port, dicom_port)
    try:
        wait_until(lambda: server.get("/system"), 60, "Orthanc's REST API", processes=[process],
                   log=lambda: (folder / "orthanc.log").read_text(errors="replace"),
                   not_yet=(urllib.error.URLError, ConnectionError))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
