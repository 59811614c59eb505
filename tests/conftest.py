"""Shared fixtures: a small synthetic fixture set written once per test session, listeners of the node."""

from __future__ import annotations

import json
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import ServeNode
from writer_cases import ToolReport, WriterCase, pixelmed, requires_pixelmed, writer_cases
from xiqa.dicom_fixtures.generate import FixtureRecord, write_fixture_set
from xiqa.service.listener import Listener
from xiqa.service.metrics import NodeMetrics
from xiqa.service.settings import ServeSettings
from xiqa.service.spool import Spool, SpooledInstance

# Holoscan warns about the stack size and missing CUDA on import; neither matters to the tests.
warnings.filterwarnings("ignore", message=".*stack size.*")

FIXTURE_SEED = 7
#: the name of the thread a ``RunningGraph`` (``xiqa serve``'s worker) runs the Application in
GRAPH_THREAD = "xiqa-graph"


def _graph_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == GRAPH_THREAD and thread.is_alive()}


@pytest.fixture(autouse=True)
def no_graph_left_running() -> Iterator[None]:
    """Every test ends the graphs it starts (``Worker.close``): a daemon graph thread still inside
    Holoscan's scheduler runs native code while the interpreter tears down at exit, where the suite
    in a fresh container once died after its summary with glibc's ``malloc_consolidate(): invalid
    chunk size``; one test had left such a thread running."""
    before = _graph_threads()
    yield
    left = _graph_threads() - before
    for thread in left:
        thread.join(timeout=5)  # ``RunningGraph.close`` returns as the thread ends, not after
    running = sorted(thread.name for thread in left if thread.is_alive())
    assert not running, f"the test left {running} running: close the Worker or RunningGraph it started"


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance of every DICOM variant (plus masks, Object-CXR JPEG/CSV, manifest)."""
    from xiqa.dicom_fixtures.instances import VARIANTS

    folder = tmp_path_factory.mktemp("fixtures")
    write_fixture_set(folder, count=len(VARIANTS), seed=FIXTURE_SEED, size_range=(300, 640))
    return folder


@pytest.fixture(scope="session")
def fixture_records(fixture_dir: Path) -> list[FixtureRecord]:
    from xiqa.dicom_fixtures.generate import FixtureRecord
    from xiqa.dicom_fixtures.instances import VARIANTS_BY_NAME

    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    return [FixtureRecord(entry["name"], fixture_dir / entry["dicom"], fixture_dir / entry["mask"],
                          VARIANTS_BY_NAME[entry["variant"]],
                          tuple(o["kind"] for o in entry["objects"])) for entry in manifest]


@pytest.fixture(scope="session")
def cases(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, WriterCase]:
    """Every writer case (fixture variants and quirky sources) with its SEG/SC/SR written; read only."""
    return writer_cases(fixture_dir, tmp_path_factory.mktemp("writer_cases"))


@pytest.fixture
def nodes() -> Iterator[list[ServeNode]]:
    """``xiqa serve`` processes a test started (append them); any still running is killed afterwards."""
    started: list[ServeNode] = []
    yield started
    for node in started:
        if node.process.poll() is None:
            node.stop(signal.SIGKILL)


@pytest.fixture
def listening(tmp_path: Path):
    """Start a listener with the given settings; stop every one afterwards."""
    started = []

    def start(**overrides) -> tuple[Listener, Spool, NodeMetrics, list[SpooledInstance]]:
        values = {"port": 0, "bind": "127.0.0.1", "min_free_bytes": 0, "storage": tmp_path / "storage",
                  **overrides}
        settings = ServeSettings(output=tmp_path / "out", **values)
        spool, metrics, stored = Spool(settings.storage, settings.min_free_bytes), NodeMetrics(), []
        listener = Listener(settings, spool, metrics, stored.append)
        listener.start()
        started.append(listener)
        return listener, spool, metrics, stored

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture(scope="session")
def pixelmed_reports(cases: dict[str, WriterCase]) -> dict[Path, ToolReport]:
    """PixelMed's report on every SEG, SC and SR of ``cases`` (one JVM for all, about a minute)."""
    if requires_pixelmed.args[0]:
        pytest.skip(requires_pixelmed.kwargs["reason"])
    return pixelmed([case.paths[kind] for case in cases.values() for kind in ("seg", "sc", "sr")])
