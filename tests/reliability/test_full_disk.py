"""Storage faults: the spool on a small tmpfs this test mounts (so root only), filled up, made read-only,
and an output folder that vanishes under a running worker."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from serve_helpers import echo, large_plates, send
from support import copies
from xiqa.service.listener import OUT_OF_RESOURCES, SUCCESS
from xiqa.service.metrics import NodeMetrics
from xiqa.service.spool import INCOMING, RECEIVING, Spool, StorageFull

pytestmark = pytest.mark.reliability

SIZE = 4 * 2**20


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A 4 MiB tmpfs mounted on a fresh folder, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:  # root without CAP_SYS_ADMIN, e.g. in an unprivileged container
        pytest.skip(f"mounting a size-limited tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


def test_a_full_spool_answers_out_of_resources_keeps_nothing_half_written_and_recovers(
        listening, small_filesystem, canary_sources, tmp_path, figures):
    spool_root = small_filesystem / "spool"
    listener, spool, metrics, stored = listening(storage=spool_root)
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (SIZE // 2))
    instances = copies(canary_sources[:1], tmp_path / "copies", 20, studies=1)  # ~190 kB each
    statuses = send(listener.port, instances)
    accepted = statuses.count(SUCCESS)
    refused = len(instances) - accepted
    assert 0 < accepted < len(instances) and statuses[accepted:] == [OUT_OF_RESOURCES] * refused
    assert echo(listener.port)  # the node stays up
    # what was acknowledged is complete, and nothing else is there
    kept = sorted((spool_root / INCOMING).rglob("*"))
    assert [p for p in kept if p.is_file()] == sorted(i.path for i in stored) and len(stored) == accepted
    for sent, instance in zip(instances[:accepted], stored, strict=True):  # stored in the order sent
        assert dcmread(instance.path).PixelData == dcmread(sent).PixelData
    refusals = lambda reason: metrics.registry.get_sample_value(  # noqa: E731
        "xiqa_instances_refused_total", {"reason": reason})
    assert refusals("storage full") == refused

    filler.unlink()  # space returns: the same instances are taken now
    assert send(listener.port, instances[accepted:accepted + 3]) == [SUCCESS] * 3

    _remount(small_filesystem, "ro")  # an unwritable spool: refused, the node stays up
    try:
        assert send(listener.port, instances[accepted + 3:accepted + 4]) == [OUT_OF_RESOURCES]
        assert echo(listener.port)
        assert refusals("storage error") == 1
    finally:
        _remount(small_filesystem, "rw")
    assert send(listener.port, instances[accepted + 3:accepted + 4]) == [SUCCESS]
    assert not list(spool_root.rglob("*.part")) and not any((spool_root / RECEIVING).iterdir())
    figures["full disk"] = {"faults survived": 3, "acknowledged before full": accepted,
                            "refused while full": refused, "half-written acknowledged": 0}


def test_a_plate_that_fills_the_disk_half_way_through_its_receive_is_refused_and_leaves_nothing(
        listening, small_filesystem, tmp_path):
    spool_root = small_filesystem / "spool"
    listener, spool, metrics, stored = listening(storage=spool_root)
    plate = large_plates(tmp_path / "plates", 1)[0]  # 2.4 MB
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (SIZE - 2**20))  # 1 MiB stays free: the disk fills mid-plate
    assert send(listener.port, [plate]) == [OUT_OF_RESOURCES]
    assert stored == [] and not any((spool_root / RECEIVING).iterdir())
    assert echo(listener.port)
    filler.unlink()
    assert send(listener.port, [plate]) == [SUCCESS]
    assert dcmread(stored[0].path).PixelData == dcmread(plate).PixelData


def test_the_free_space_reserve_refuses_before_the_disk_is_full(small_filesystem, canary_sources):
    spool = Spool(small_filesystem / "spool", min_free_bytes=SIZE - 2**20)
    data = canary_sources[0].read_bytes()
    spool.store([data], "1.2.3.1", "1.2.3")  # well below the reserve
    with pytest.raises(StorageFull, match="would stay free"):
        for index in range(2, 40):
            spool.store([data], f"1.2.3.{index}", "1.2.3")
    assert shutil.disk_usage(small_filesystem).free > SIZE - 2**20 - len(data)


def test_a_vanished_output_folder_is_made_again(canary_sources, tmp_path, figures):
    from xiqa.app import build_settings
    from xiqa.service.worker import Worker

    output = tmp_path / "volume" / "out"
    settings = build_settings([], output, device="cpu")
    spool = Spool(tmp_path / "storage")
    worker = Worker(settings, spool, NodeMetrics(), study_timeout=0)
    header = dcmread(canary_sources[0], stop_before_pixels=True)
    worker.add(spool.store([canary_sources[0].read_bytes()], header.SOPInstanceUID, header.StudyInstanceUID))
    shutil.rmtree(tmp_path / "volume", ignore_errors=True)  # the output volume went away
    try:
        cases = worker.process_complete()
    finally:
        worker.close()  # a graph thread left running dies inside Holoscan at interpreter exit
    assert [case.ok for case in cases] == [True]
    assert (output / str(header.SOPInstanceUID) / "report.json").exists()
    figures.setdefault("full disk", {})["vanished output folder"] = "recreated"
