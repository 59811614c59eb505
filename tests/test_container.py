"""The images built by scripts/build-image.sh, run as the cluster runs them (scripts/container-tests.sh).

``xiqa-serve`` as the StatefulSet runs it: user 1000, read-only root filesystem with a tmpfs
``/tmp``, every capability dropped, no privilege escalation, the spool on a volume, ``xiqa.toml``
mounted read-only where the ConfigMap goes and none of the StatefulSet's HOME/cache variables (the
image must work without them).  Real WG04 chest plates go in with dcmtk's ``storescu`` from the
host; SEG/SC/SR come back in the output volume and at a real Orthanc.  ``xiqa`` (the MAP) runs as
the Argo template runs it, on a folder with a chest plate, an extremity and a broken file.

Marked ``container`` and ``slow`` (out of the default suite); skipped without docker or the images.
Lines starting ``container-figure:`` are the start-up and footprint figures README quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from orthanc import free_port, requires_orthanc, running_orthanc
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from serve_helpers import echo
from waiting import wait_until

TAG = os.environ.get("XIQA_IMAGE_TAG", "0.1.0")
SERVE_IMAGE, MAP_IMAGE = f"xiqa-serve:{TAG}", f"xiqa:{TAG}"
ROOT = Path(__file__).resolve().parent.parent
DOCKER = shutil.which("docker")
STORESCU = shutil.which("storescu")
UID = 1000  # the image's user, the StatefulSet's runAsUser
SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "seg", "1.2.840.10008.5.1.4.1.1.7": "sc",
               "1.2.840.10008.5.1.4.1.1.88.11": "sr", "1.2.840.10008.5.1.4.1.1.88.22": "sr",
               "1.2.840.10008.5.1.4.1.1.88.33": "sr", "1.2.840.10008.5.1.4.1.1.88.34": "sr"}


def _image_present(image: str) -> bool:
    return DOCKER is not None and subprocess.run([DOCKER, "image", "inspect", image], capture_output=True,
                                                 timeout=60).returncode == 0


pytestmark = [
    pytest.mark.container, pytest.mark.slow,
    pytest.mark.skipif(not (_image_present(SERVE_IMAGE) and _image_present(MAP_IMAGE)),
                       reason=f"docker and the images {SERVE_IMAGE}, {MAP_IMAGE} (scripts/build-image.sh)"),
    pytest.mark.skipif(STORESCU is None, reason="dcmtk's storescu not installed"),
]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)}: {result.returncode}\n{result.stderr[-3000:]}")
    return result


def writable_folder(path: Path) -> Path:
    """A host folder the container's user may write: the spool volume, the MAP's output."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


def chest_plates(folder: Path, count: int) -> list[Path]:
    """WG04 RG1 (a real CR PA chest), each copy a study of its own (new study, series, instance UIDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset = dcmread(get_testdata_file("RG1_UNCR.dcm"))
    paths = []
    for index in range(count):
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"chest{index:02d}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def storescu(port: int, paths: list[Path]) -> None:
    """Send with dcmtk, as a modality would; returns once every file was acknowledged."""
    result = subprocess.run([STORESCU, "-aet", "CR_ROOM_1", "-aec", "XIQA", "127.0.0.1", str(port),
                             *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# the host, as the containers reach it (Docker 20.10+: --add-host NAME:host-gateway)
HOST = "host.docker.internal"


@dataclass
class ServeContainer:
    name: str
    volume: Path
    dicom_port: int
    metrics_port: int
    review_port: int

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return docker("inspect", "-f", "{{" + field + "}}", self.name).stdout.strip()

    def wait(self, condition: Callable[[], object], seconds: float, what: str) -> object:
        """``condition()`` once truthy; fails at once with the log when the container exits."""
        def ready() -> object:
            value = condition()
            if not value and self.state(".State.Running") != "true":
                pytest.fail(f"{what}: the container exited\n{self.logs()[-4000:]}")
            return value
        return wait_until(ready, seconds, what, log=self.logs, not_yet=(OSError,), interval=0.5)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (over its labels)."""
        address = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(address, timeout=30).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith((name + " ", name + "{")))

    def reports(self) -> list[dict]:
        paths = sorted((self.volume / "output").glob("*/report.json"))
        return [json.loads(path.read_text()) for path in paths]

    def resident_bytes(self, key: str) -> int:
        """``VmRSS`` or ``VmHWM`` (peak) of xiqa serve, the container's first process, seen from the host."""
        pid = self.state(".State.Pid")
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)


def serve_config(folder: Path, forward: str) -> Path:
    """deploy/kubernetes/base/xiqa.toml with the test's destination and a 5 s study timeout."""
    text = (ROOT / "deploy" / "kubernetes" / "base" / "xiqa.toml").read_text()
    text = text.replace('forward = ["PACS@192.0.2.100:104"]', f'forward = ["{forward}"]')
    text = text.replace("study-timeout = 30", "study-timeout = 5")
    assert forward in text and "study-timeout = 5" in text
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "xiqa.toml").write_text(text)
    return folder


def start_serve(volume: Path, config: Path, ports: tuple[int, int, int] | None = None) -> ServeContainer:
    """``docker run`` as the StatefulSet runs the pod; returns at once (``wait_ready`` waits)."""
    dicom_port, metrics_port, review_port = ports or (free_port(), free_port(), free_port())
    name = f"xiqa-test-{time.monotonic_ns()}"
    docker("run", "-d", "--name", name, "--user", f"{UID}:{UID}", "--read-only", "--tmpfs", "/tmp",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", "4g",
           "--add-host", f"{HOST}:host-gateway",
           "-e", "OMP_NUM_THREADS=2", "-e", "MKL_NUM_THREADS=2",
           "-v", f"{volume}:/var/xiqa", "-v", f"{config}:/etc/xiqa:ro",
           "-p", f"127.0.0.1:{dicom_port}:11112", "-p", f"127.0.0.1:{metrics_port}:9100",
           "-p", f"127.0.0.1:{review_port}:8080",
           SERVE_IMAGE, "--config", "/etc/xiqa/xiqa.toml",
           "--review-port", "8080", "--review-bind", "0.0.0.0")
    return ServeContainer(name, volume, dicom_port, metrics_port, review_port)


def wait_ready(node: ServeContainer, seconds: float = 300) -> None:
    node.wait(lambda: echo(node.dicom_port, calling="CR_ROOM_1"), seconds, "C-ECHO from the host")


def remove(node: ServeContainer) -> None:
    docker("rm", "-f", node.name, check=False)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def serve(tmp_path_factory, orthanc) -> Iterator[ServeContainer]:
    """One node for the module's checks, forwarding to the host's Orthanc; started and timed here."""
    folder = tmp_path_factory.mktemp("serve")
    config = serve_config(folder / "config", f"PACS@{HOST}:{orthanc.dicom_port}")
    started = time.monotonic()
    node = start_serve(writable_folder(folder / "volume"), config)
    try:
        wait_ready(node)
        elapsed = time.monotonic() - started
        print(f"container-figure: docker run to first accepted association {elapsed:.1f} s")
        print(f"container-figure: idle RSS {node.resident_bytes('VmRSS') / 2**20:.0f} MiB")
        yield node
    finally:
        print(node.logs()[-2000:])
        remove(node)


@requires_orthanc
def test_health_answers_inside_the_read_only_container_as_the_probes_run_it(serve):
    result = docker("exec", serve.name, "xiqa", "health", "--port", "11112", "--timeout", "10", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # the image's HEALTHCHECK (the same command) turns the container healthy
    serve.wait(lambda: serve.state(".State.Health.Status") == "healthy", 120, "docker's health status")
    assert "Read-only file system" not in serve.logs()


@requires_orthanc
def test_a_real_plate_comes_back_as_seg_sc_sr_in_the_volume_and_at_orthanc(serve, orthanc):
    (plate,) = chest_plates(serve.volume.parent / "plates", 1)
    storescu(serve.dicom_port, [plate])
    serve.wait(lambda: serve.reports(), 300, "report.json in the output volume")
    (report,) = serve.reports()
    assert report["frontal_chest"] and report["verdict"] in {"Good", "Acceptable", "Poor"}
    assert {"seg", "sc", "sr"} <= set(report["outputs"])
    written = {SOP_CLASSES.get(str(dcmread(path, stop_before_pixels=True).SOPClassUID))
               for path in (serve.volume / "output").glob("*/*.dcm")}
    assert {"seg", "sc", "sr"} <= written
    at_orthanc = lambda: {SOP_CLASSES.get(orthanc.get(f"/instances/{iid}/tags?simplify")["SOPClassUID"])  # noqa: E731
                          for iid in orthanc.get("/instances")}
    serve.wait(lambda: {"seg", "sc", "sr"} <= at_orthanc(), 180, "SEG, SC and SR at Orthanc")
    assert serve.metric("xiqa_instances_processed_total") >= 1
    # counted once Orthanc acknowledged the file, an instant after Orthanc lists it
    serve.wait(lambda: serve.metric("xiqa_forwarded_total") >= 3, 60, "xiqa_forwarded_total counting 3")
    page = urllib.request.urlopen(f"http://127.0.0.1:{serve.review_port}/", timeout=30)
    assert page.status == 200 and b"<html" in page.read().lower()


@requires_orthanc
def test_twenty_plates_peak_resident_memory(serve):
    before = len(serve.reports())
    plates = chest_plates(serve.volume.parent / "twenty", 20)
    started = time.monotonic()
    storescu(serve.dicom_port, plates)
    serve.wait(lambda: len(serve.reports()) >= before + 20, 1200, "20 reports")
    print(f"container-figure: 20 plates sent and processed in {time.monotonic() - started:.1f} s")
    print(f"container-figure: peak RSS {serve.resident_bytes('VmHWM') / 2**20:.0f} MiB")
    print(f"container-figure: RSS after the run {serve.resident_bytes('VmRSS') / 2**20:.0f} MiB")


@requires_orthanc
def test_docker_stop_finishes_the_study_in_progress_and_exits_0(tmp_path, orthanc):
    config = serve_config(tmp_path / "config", f"PACS@{HOST}:{orthanc.dicom_port}")
    node = start_serve(writable_folder(tmp_path / "volume"), config)
    try:
        wait_ready(node)
        (plate,) = chest_plates(tmp_path / "plates", 1)
        storescu(node.dicom_port, [plate])
        time.sleep(6)  # the 5 s study timeout: the study is in the graph now
        docker("stop", "-t", "120", node.name, timeout=180)
        assert node.state(".State.ExitCode") == "0", node.logs()[-3000:]
        assert len(node.reports()) == 1, node.logs()[-3000:]
        assert "xiqa serve stopped" in node.logs()
    finally:
        remove(node)


@requires_orthanc
def test_kill_9_and_a_restart_on_the_same_volume_lose_nothing_acknowledged(tmp_path, orthanc):
    config = serve_config(tmp_path / "config", f"PACS@{HOST}:{orthanc.dicom_port}")
    volume = writable_folder(tmp_path / "volume")
    node = start_serve(volume, config)
    try:
        wait_ready(node)
        plates = chest_plates(tmp_path / "plates", 3)
        storescu(node.dicom_port, plates)  # acknowledged, then killed within the 5 s study timeout
        docker("kill", "-s", "KILL", node.name)
        assert node.state(".State.ExitCode") == "137"
        assert len(list((volume / "storage" / "incoming").glob("*/*.dcm"))) + len(node.reports()) >= 3
    finally:
        remove(node)
    again = start_serve(volume, config)
    try:
        wait_ready(again)
        again.wait(lambda: len(again.reports()) == 3, 600, "the 3 acknowledged plates, after the restart")
        sources = {report["source_sop_instance_uid"] for report in again.reports()}
        assert sources == {str(dcmread(plate, stop_before_pixels=True).SOPInstanceUID) for plate in plates}
    finally:
        remove(again)


def test_the_map_writes_the_outputs_of_a_folder_as_the_argo_template_runs_it(tmp_path):
    inputs = tmp_path / "input"
    (chest,) = chest_plates(inputs / "study_a", 1)
    (inputs / "study_b").mkdir()
    shutil.copy(get_testdata_file("RG3_UNCR.dcm"), inputs / "study_b" / "ankle.dcm")
    (inputs / "study_b" / "torn.dcm").write_bytes(b"DICM" * 10)
    os.chmod(tmp_path, 0o755)
    for path in [inputs, *inputs.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    output = writable_folder(tmp_path / "output")
    result = docker("run", "--rm", "--user", f"{UID}:{UID}", "--read-only", "--tmpfs", "/tmp",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "-e", "HOLOSCAN_INPUT_PATH=/var/holoscan/input",
                    "-e", "HOLOSCAN_OUTPUT_PATH=/var/holoscan/output",
                    "-v", f"{inputs}:/var/holoscan/input:ro", "-v", f"{output}:/var/holoscan/output",
                    MAP_IMAGE, timeout=900, check=False)
    assert result.returncode == 1, result.stderr[-3000:]  # the broken file is rejected: exit 1
    assert "rejected /var/holoscan/input/study_b/torn.dcm: " in result.stderr
    reports = {report["source_sop_instance_uid"]: report
               for report in (json.loads(path.read_text()) for path in output.glob("*/report.json"))}
    scored = reports[str(dcmread(chest, stop_before_pixels=True).SOPInstanceUID)]
    assert scored["frontal_chest"] and {"seg", "sc", "sr"} <= set(scored["outputs"])
    (refused,) = [report for report in reports.values() if not report["frontal_chest"]]
    assert refused["not_scored_reason"].startswith("not a frontal chest radiograph")
