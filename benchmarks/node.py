"""End to end under load: N studies from 4 concurrent associations into a real ``xiqa serve``.

    .venv/bin/python benchmarks/node.py [--studies 8] [--per-study 1] [--size 2000]
        [--associations 4] [--study-timeout 1.0] [--interval 0]

Writes ``studies x per-study`` synthetic 15-bit CR plates (``pipeline.py``'s, one Study
Instance UID per study), starts ``xiqa serve`` as its own process (``tests/serve_helpers.ServeNode``,
CPU), sends the studies from ``--associations`` threads (one association per study,
pynetdicom C-STORE over loopback), and prints: received instances/s, processed
images/min, p50/p95 time from a study's last C-STORE answer to all its instances
moved to ``processed/`` (their SEG, SC, SR and report written before that rename),
the same minus the study timeout the node waits by design, and the node's peak RSS
(``VmHWM``).  By default every study is sent at once, so the latencies are mostly queueing;
``--interval S`` starts study k no earlier than k x S seconds after the first (a department's
pace, e.g. 12 s for 300 studies an hour), so they show what one study costs.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_helpers import ServeNode, peak_resident_bytes, send  # noqa: E402 - the tests' SCU and node process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import _write_plates  # noqa: E402 - the same plates as the pipeline benchmark

_STUDY_LINE = re.compile(r"study \S+: \d+ instances in ([0-9.]+) s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--per-study", type=int, default=1)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--study-timeout", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds between the starts of consecutive studies (default 0: all at once)")
    args = parser.parse_args(argv)

    from xiqa.service.spool import PROCESSED, safe_name

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "in").mkdir()
        studies = []
        for number in range(1, args.studies + 1):
            paths = _write_plates(folder / "in", args.per_study, args.size, study_number=number)
            studies.append((str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths))
        node = ServeNode(folder / "node", _free_port(), args.study_timeout)
        last_store: dict[str, float] = {}
        failures: list[str] = []
        queue = list(studies)
        lock = threading.Lock()

        def sender() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    uid, paths = queue.pop(0)
                    number = len(studies) - len(queue) - 1
                time.sleep(max(0.0, started + number * args.interval - time.time()))
                statuses = send(node.port, paths)
                last_store[uid] = time.time()
                if statuses != [0] * len(paths):
                    failures.append(f"study {uid}: statuses {statuses}")

        try:
            started = time.time()
            threads = [threading.Thread(target=sender) for _ in range(args.associations)]
            for thread in threads:
                thread.start()
            done: dict[str, float] = {}
            processed = folder / "node" / "storage" / PROCESSED
            deadline = time.monotonic() + 600 + 60 * len(studies) * args.per_study
            while len(done) < len(studies) and not failures:
                for uid, paths in studies:
                    study_folder = processed / safe_name(uid)
                    if uid not in done and uid in last_store and study_folder.is_dir() and len(
                            list(study_folder.glob("*.dcm"))) == len(paths):
                        done[uid] = time.time()
                assert node.process.poll() is None, f"xiqa serve exited:\n{node.text()[-3000:]}"
                assert time.monotonic() < deadline, f"not all studies processed:\n{node.text()[-3000:]}"
                time.sleep(0.02)
            for thread in threads:
                thread.join()
            received_seconds = max(last_store.values()) - started
            peak_rss = peak_resident_bytes(node.process.pid) / 2**20
            # the worker's own figure: from taking the study to its last instance moved (its log line)
            worker_seconds = [float(seconds) for seconds in _STUDY_LINE.findall(node.text())]
        finally:
            node.stop()
        if failures:
            raise SystemExit("\n".join(failures))

    instances = len(studies) * args.per_study
    latencies = [done[uid] - last_store[uid] for uid, _ in studies]
    p50, p95 = statistics.median(latencies), _percentile(latencies, 0.95)
    pace = f"one every {args.interval} s" if args.interval else "all at once"
    print(f"xiqa node benchmark: {len(studies)} studies x {args.per_study} plates of {args.size}x{args.size} "
          f"from {args.associations} associations ({pace}), study timeout {args.study_timeout} s, CPU")
    print(f"received: {instances / received_seconds:.2f} instances/s "
          f"({instances} in {received_seconds:.1f} s)")
    print(f"processed: {instances / (max(done.values()) - started) * 60:.1f} images/min")
    print(f"last C-STORE -> results on disk: p50 {p50:.2f} s, p95 {p95:.2f} s; minus the study timeout: "
          f"p50 {p50 - args.study_timeout:.2f} s, p95 {p95 - args.study_timeout:.2f} s")
    if worker_seconds:
        print(f"in the worker (study taken -> instances moved): median "
              f"{statistics.median(worker_seconds):.2f} s, max {max(worker_seconds):.2f} s")
    print(f"node peak RSS: {peak_rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
