"""When a study is complete, feed its waiting instances to the graph (``xiqa.app``, the one code path).

A study is complete when no instance of it arrived for ``study_timeout``
seconds; with a timeout of 0 every instance is processed on its own.  One
Application keeps running (``RunningGraph``, its own thread) from study to
study, so no study pays the framework's start-up and the models stay loaded;
the thread that calls ``run`` (the main thread of ``xiqa serve``) hands it one
study at a time and waits for its cases, and the listener's threads only call
``add``.  If that graph dies, the study counts as a failed run and the next one
starts a new graph.  Instances of a study that
arrive while it is being processed wait for the next completion.  Between
studies, and at least every ``HOUSEKEEPING_SECONDS``, the same thread calls
``housekeeping`` (the spool's retention), so it never races a study's moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from xiqa.app import RunningGraph, RunSettings
from xiqa.operators.case import Case
from xiqa.operators.writer_common import OutputKind

from .metrics import NodeMetrics
from .spool import Spool, SpooledInstance

logger = logging.getLogger(__name__)

#: graph runs of one study that may fail (not a case: the run itself) before its instances are set aside
MAX_RUN_ATTEMPTS = 3
HOUSEKEEPING_SECONDS = 60.0
#: freed heap the worker lets the process keep before it gives it back (``HeapKeeper``)
HEAP_HEADROOM_BYTES = 512 * 2**20
#: how often a study's wait looks whether the graph thread is still alive
GRAPH_CHECK_SECONDS = 0.5


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return library if library is not None and hasattr(library, "malloc_trim") else None


_LIBC = _glibc()


def return_free_heap() -> None:
    """Give the heap pages that are free back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Each image allocates and frees some hundred MiB (decoded pixels, tensors, maps, encoders) in the
    graph's operator threads, each thread in a malloc arena of its own.  glibc keeps the freed chunks
    in those arenas instead of returning them, so a long-lived graph's resident memory grew by some
    MiB per image although nothing referenced them (measured: at 60 images 451 of 885 MiB in the
    arenas were free).  Between studies nothing is in flight; but the next image faults the pages in
    again, which is why the worker trims only once the heap grew past a headroom (``HeapKeeper``).
    A collection first: what is left of a case in reference cycles is freed only by the collector.
    It is cheap (0.01 ms) because the objects that exist once the graph is built are frozen
    (``freeze_long_lived_objects``); over them a full collection takes 0.2 s.
    """
    if _LIBC is not None:
        gc.collect()
        _LIBC.malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapKeeper:
    """Gives freed heap back once the process has grown ``headroom`` bytes past where it last did.

    Not after every study: memory given back is memory the next image must fault in again, and on
    this kind of VM (free page reporting) that cost 0.4 s of system time per 2,000 px plate
    (a study of one plate: 0.76 s without the trim, 1.18 s with it, 3 s apart).  Without any
    trim the server grew some 2 MiB per image; with the headroom it stays within it.
    """

    def __init__(self, headroom: int = HEAP_HEADROOM_BYTES, resident: Callable[[], int] = resident_bytes,
                 give_back: Callable[[], None] = return_free_heap) -> None:
        self.headroom, self._resident, self._give_back = headroom, resident, give_back
        self.floor: int | None = None  # resident bytes just after the last give-back

    def after_study(self) -> bool:
        """Collect the garbage; give the heap back when it grew past the headroom (True then)."""
        if self.floor is not None and self._resident() <= self.floor + self.headroom:
            gc.collect()  # cheap: the start-up's objects are frozen
            return False
        self._give_back()  # collects, then trims
        self.floor = self._resident()
        return True


def freeze_long_lived_objects() -> None:
    """Leave every object alive now (models, Holoscan, torch: some 650,000) out of later collections.

    Measured on 2 cores (``benchmarks/graph_memory.py --trim``): a full ``gc.collect()`` took 204 ms
    over them, paid after every study and by each automatic full collection in the middle of one;
    once frozen, 0.01 ms.  Garbage is
    collected first, so nothing dead is frozen; ``gc.unfreeze`` (in ``Worker.close``) hands the
    objects back to the collector.
    """
    gc.collect()
    gc.freeze()


class Forwarder(Protocol):
    def enqueue(self, files: list[Path]) -> None: ...


@dataclass
class _Study:
    instances: dict[Path, SpooledInstance] = field(default_factory=dict)
    last_arrival: float = 0.0
    failed_runs: int = 0


class Worker:
    """Collects spooled instances per study and processes each study once it is complete."""

    def __init__(self, run_settings: RunSettings, spool: Spool, metrics: NodeMetrics,
                 study_timeout: float, forwarder: Forwarder | None = None,
                 run_guard: Callable[[], AbstractContextManager] = nullcontext,
                 housekeeping: Callable[[], object] = lambda: None) -> None:
        self.run_settings = run_settings
        self.run_guard = run_guard  # entered around each graph run
        self.housekeeping = housekeeping
        self.spool = spool
        self.metrics = metrics
        self.study_timeout = study_timeout
        self.forwarder = forwarder
        self._studies: dict[str, _Study] = {}
        self._changed = threading.Condition()
        self._stopping = False
        self._graph: RunningGraph | None = None
        self._active: dict[Path, SpooledInstance] = {}  # the study in the graph, by path
        self._done: list[Case] = []
        self._finished = threading.Condition()
        self.heap = HeapKeeper()

    def add(self, instance: SpooledInstance, arrived: float | None = None) -> None:
        """A stored instance (thread-safe); ``arrived`` is a ``time.time()`` stamp, default now."""
        with self._changed:
            study = self._studies.setdefault(instance.study, _Study())
            if instance.path not in study.instances:
                study.instances[instance.path] = instance
            study.last_arrival = max(study.last_arrival, time.time() if arrived is None else arrived)
            self._update_depth()
            self._changed.notify_all()

    def stop(self) -> None:
        """Ask ``run`` to return after the study in progress (thread- and signal-safe)."""
        self._stopping = True
        with self._changed:
            self._changed.notify_all()

    def run(self) -> None:
        """Process complete studies until ``stop``; housekeeping between them."""
        try:
            while not self._stopping:
                if self.wait_for_complete(timeout=HOUSEKEEPING_SECONDS):
                    self._process_each_complete()
                self.housekeeping()
        finally:
            self.close()

    def close(self) -> None:
        """End the running graph (it has nothing in progress between studies)."""
        if self._graph is not None:
            self._graph.close(timeout=30)
            self._graph = None
            gc.unfreeze()

    def wait_for_complete(self, timeout: float | None = None) -> bool:
        """Block until some study is complete (True), or until ``stop`` or ``timeout`` (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._stopping:
                now = time.time()
                waits = [study.last_arrival + self.study_timeout - now
                         for study in self._studies.values() if study.instances]
                if waits and min(waits) <= 0:
                    return True
                if deadline is not None:
                    waits.append(deadline - time.monotonic())
                    if waits[-1] <= 0:
                        return False
                self._changed.wait(timeout=min(waits, default=None))
            return False

    def process_complete(self) -> list[Case]:
        """Process every study that is complete now; the cases of all of them."""
        cases = []
        while (taken := self._take_complete()) is not None:
            cases += self.process(*taken)
        return cases

    def _process_each_complete(self) -> None:
        """Like ``process_complete`` for ``run``: each study's cases are dropped (a node that runs for
        days must not hold them), and the freed heap is given back once it passes the headroom."""
        while (taken := self._take_complete()) is not None:
            self.process(*taken)
            self.heap.after_study()

    def pending(self) -> int:
        with self._changed:
            return self._waiting()

    def _waiting(self) -> int:
        return sum(len(study.instances) for study in self._studies.values())

    def _update_depth(self) -> None:
        self.metrics.queue_depth.set(self._waiting())

    def _take_complete(self) -> tuple[str, list[SpooledInstance]] | None:
        with self._changed:
            now = time.time()
            for key, study in self._studies.items():
                if study.instances and study.last_arrival + self.study_timeout <= now:
                    taken = list(study.instances.values())
                    study.instances.clear()
                    return key, taken
        return None

    def process(self, study_key: str, instances: list[SpooledInstance]) -> list[Case]:
        """Run the graph on one study's instances; each one ends processed or rejected."""
        started = time.perf_counter()
        try:
            cases = self._run_study(instances)
        except Exception as error:  # noqa: BLE001 - the node must outlive one bad run
            # the type only: a framework's message may quote dataset values (case errors are redacted)
            logger.debug("graph run of study %s failed", study_key, exc_info=True)
            self._run_failed(study_key, [i for i in instances if i.path.exists()], type(error).__name__)
            return []
        unfinished = [i for i in instances if i.path.exists()]
        if unfinished:  # the graph ended without a case for them (should not happen)
            self._run_failed(study_key, unfinished, "the graph returned no case")
        good = all(case.ok for case in cases) and not unfinished
        (self.metrics.studies_processed if good else self.metrics.studies_failed).inc()
        logger.info("study %s: %d instances in %.1f s%s", study_key, len(instances),
                    time.perf_counter() - started, "" if good else " (some rejected)")
        with self._changed:
            study = self._studies.get(study_key)
            if study is not None and not study.instances:
                del self._studies[study_key]
            self._update_depth()
        return cases

    def _run_study(self, instances: list[SpooledInstance]) -> list[Case]:
        """Feed the study to the running graph and wait until each instance has its case."""
        graph = self._running_graph()
        with self._finished:
            self._active = {instance.path: instance for instance in instances}
            self._done = []
        try:
            for instance in instances:
                graph.submit(instance.path)
            with self._finished:
                while self._active and graph.alive:
                    self._finished.wait(GRAPH_CHECK_SECONDS)
                if self._active:
                    self._graph = None  # the next study builds a new one
                    raise graph.error or RuntimeError("the graph ended")
                return self._done
        finally:
            with self._finished:
                self._active, self._done = {}, []  # the caller holds the cases, the worker none

    def _running_graph(self) -> RunningGraph:
        if self._graph is None or not self._graph.alive:
            with self.run_guard():  # Holoscan takes over the signals while it starts
                self._graph = RunningGraph(self.run_settings, self._on_case).start()
            freeze_long_lived_objects()
        return self._graph

    def _on_case(self, case: Case) -> None:
        """In the graph's thread: the case's instance ends processed or rejected before the wait ends."""
        with self._finished:
            instance = self._active.get(case.path)
        if instance is None:  # a path of a study the worker gave up on
            return
        self._finish(case, instance)
        with self._finished:
            del self._active[case.path]
            self._done.append(case)
            self._finished.notify_all()

    def _finish(self, case: Case, instance: SpooledInstance) -> None:
        for stage, seconds in case.timings.items():
            self.metrics.stage_seconds.labels(stage=stage).observe(seconds)
        if not case.ok:
            self.metrics.instances_rejected.inc()
            logger.warning("rejected %s: %s", instance.path.name, case.error)
            self.spool.finish(instance, reason=case.error)
            return
        if self.forwarder is not None:  # queued durably before the source leaves incoming
            # a case that is not a frontal chest has an SR (with the reason) but no SEG or SC
            self.forwarder.enqueue([case.outputs[kind.value] for kind in OutputKind
                                    if kind.value in case.outputs])
        self.spool.finish(instance)
        self.metrics.instances_processed.inc()
        if not case.frontal_chest:
            self.metrics.instances_not_chest.inc()
            logger.info("not scored %s: %s", instance.path.name, case.gate.reason)
            return
        for check in case.acquisition.failed if case.acquisition is not None else ():
            self.metrics.acquisition_failures.labels(check=check.check).inc()
        quality = case.quality
        logger.info("%s: Q_img %.3f verdict %s (%s)", instance.path.name, quality.q_img,
                    quality.default_verdict.value, quality.verdict_basis)

    def _run_failed(self, study_key: str, instances: list[SpooledInstance], reason: str) -> None:
        with self._changed:
            study = self._studies.setdefault(study_key, _Study())
            study.failed_runs += 1
            attempts = study.failed_runs
        if attempts >= MAX_RUN_ATTEMPTS:
            logger.error("study %s: graph run failed %d times (%s); instances set aside as rejected",
                         study_key, attempts, reason)
            for instance in instances:
                if instance.path.exists():
                    self.spool.finish(instance, reason=f"graph run failed: {reason}")
                    self.metrics.instances_rejected.inc()
            self.metrics.studies_failed.inc()
            return
        logger.error("study %s: graph run failed (%s); retried after the study timeout", study_key, reason)
        for instance in instances:
            if instance.path.exists():
                self.add(instance)
