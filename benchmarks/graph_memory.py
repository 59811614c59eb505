"""Memory of the long-lived graph in one process: RSS, malloc arenas and live cases per N images.

    .venv/bin/python benchmarks/graph_memory.py [--images 50] [--study 10] [--trim] [--size 480 1024]

Feeds one ``RunningGraph`` (what ``xiqa serve`` keeps) copies of six synthetic radiographs, each with a
SOP Instance UID of its own, one at a time.  With ``--trim`` it gives the freed heap back after every
``--study`` images as the worker does between studies (``return_free_heap``, after freezing the
start-up's objects as the worker does: first it prints what that housekeeping costs with and without
the freeze, in the same process).  After each study it
prints one line: resident memory, glibc's arena bytes (in use and free) and the number of ``Case``
objects alive.  Free arena bytes that grow while ``in use`` and the cases stay flat are memory the
images freed and glibc kept, not references.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
from pydicom import dcmread
from pydicom.uid import generate_uid


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def arena_mib() -> tuple[float, float]:
    """glibc's (in use, free) bytes in its arenas, MiB."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks / 2**20, info.fordblks / 2**20


def print_housekeeping_cost(housekeeping, freeze, repeats: int = 5) -> None:
    """Median time of ``housekeeping()`` over the objects as they are, then once ``freeze()`` ran."""
    def median_ms() -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            housekeeping()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    unfrozen = median_ms()
    freeze()
    frozen = median_ms()
    print(f"between-study housekeeping (collect + trim): {unfrozen:.1f} ms as started, {frozen:.2f} ms with "
          f"{gc.get_freeze_count():,} start-up objects frozen ({unfrozen / max(frozen, 1e-3):.0f}x)",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50, help="default: %(default)s")
    parser.add_argument("--study", type=int, default=10, help="images per study (default: %(default)s)")
    parser.add_argument("--trim", action="store_true", help="return the freed heap after each study")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 1024), metavar=("MIN", "MAX"))
    args = parser.parse_args(argv)

    from xiqa.app import RunningGraph, build_settings
    from xiqa.dicom_fixtures.generate import write_fixture_set
    from xiqa.operators.case import Case
    from xiqa.service.worker import freeze_long_lived_objects, return_free_heap

    with tempfile.TemporaryDirectory(prefix="xiqa-graph-memory-") as temporary:
        root = Path(temporary)
        write_fixture_set(root / "fixtures", 6, seed=3, size_range=tuple(args.size))
        templates = [dcmread(path) for path in sorted((root / "fixtures" / "dicom").rglob("*.dcm"))]
        finished = threading.Semaphore(0)
        graph = RunningGraph(build_settings([], root / "output", device="cpu"),
                             lambda case: finished.release()).start()
        process = psutil.Process()
        if args.trim:
            print_housekeeping_cost(return_free_heap, freeze_long_lived_objects)
        try:
            for index in range(args.images):
                dataset = templates[index % len(templates)]
                dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                path = root / f"copy_{index:05d}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                graph.submit(path)
                finished.acquire()
                path.unlink()
                if (index + 1) % args.study == 0:
                    if args.trim:
                        return_free_heap()
                    gc.collect()
                    in_use, free = arena_mib()
                    cases = sum(isinstance(item, Case) for item in gc.get_objects())
                    print(f"images {index + 1:5d}  rss {process.memory_info().rss / 2**20:6.0f} MiB  "
                          f"arenas in use {in_use:5.0f} MiB free {free:5.0f} MiB  cases alive {cases}",
                          flush=True)
        finally:
            graph.close(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
