"""Per-study and per-instance latency of the node's graph: one Application per study vs one long-lived.

    .venv/bin/python benchmarks/study_latency.py [--studies 3] [--per-study 2] [--size 2000]

Writes ``studies x per-study`` synthetic CR plates (``pipeline.py``'s), loads the
models once, then interleaves, study by study in one process:

1. the reference: ``run_graph`` on the study's paths (what the worker did before:
   build, start and tear down the Application per study; with ``--study-timeout 0``
   per instance), and
2. the long-lived ``RunningGraph`` (what the worker does now): submit the study's
   paths and wait for their cases,

and prints per-study and per-instance medians and the ratio long-lived / per study.
The graph's own start-up is printed apart: the node pays it once, before the first study.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import _write_plates  # noqa: E402 - the same plates as the pipeline benchmark


def _long_lived(graph, done: list, arrived: threading.Condition, paths: list[Path]) -> float:
    started = time.perf_counter()
    with arrived:
        expected = len(done) + len(paths)
        for path in paths:
            graph.submit(path)
        while len(done) < expected:
            if not arrived.wait(timeout=600):
                raise SystemExit("the long-lived graph gave no case for 10 minutes")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--per-study", type=int, default=2)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from xiqa.app import RunningGraph, build_settings, run_graph

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = _write_plates(folder, args.studies * args.per_study, args.size)
        studies = [paths[i:i + args.per_study] for i in range(0, len(paths), args.per_study)]
        settings = build_settings([], folder / "out", device=args.device)
        done: list = []
        arrived = threading.Condition()

        def on_case(case) -> None:
            with arrived:
                done.append(case)
                arrived.notify_all()

        started = time.perf_counter()
        graph = RunningGraph(settings, on_case).start()
        start_up = time.perf_counter() - started
        per_study, long_lived, cases = [], [], []
        try:
            for study in studies:
                started = time.perf_counter()
                cases += run_graph(dataclasses.replace(settings, paths=study))
                per_study.append(time.perf_counter() - started)
                long_lived.append(_long_lived(graph, done, arrived, study))
        finally:
            graph.close(timeout=60)
        failed = [case.error for case in cases + done if not case.ok]
        if failed:
            raise SystemExit(f"cases failed: {failed}")

    old, new = statistics.median(per_study), statistics.median(long_lived)
    print(f"xiqa study latency: {args.studies} studies x {args.per_study} plates of "
          f"{args.size}x{args.size}, device {settings.model.device}, interleaved in one process")
    print(f"long-lived graph start-up (once per node): {start_up:.3f} s")
    print(f"{'':<22}{'per-study app s':>16}{'long-lived s':>14}")
    print(f"{'study, median':<22}{old:>16.3f}{new:>14.3f}")
    print(f"{'instance, median':<22}{old / args.per_study:>16.3f}{new / args.per_study:>14.3f}")
    pairs = zip(per_study, long_lived, strict=True)
    print(f"{'studies, each':<22}" + "  ".join(f"{o:.2f}/{n:.2f}" for o, n in pairs))
    print(f"long-lived / per-study app: {new / old:.3f} (saved {old - new:.3f} s per study)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
