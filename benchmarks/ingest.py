"""C-STORE ingest speed of ``xiqa serve``'s listener + spool against dcmtk and a plain pynetdicom SCP.

    .venv/bin/python benchmarks/ingest.py [--count 100] [--repeats 3] [--parallel 1 4]
        [--sets large small] [--receivers ours storescp storescp-sync plain [plain-128k]]
        [--settle 3] [--json OUT] [--quick]

Everything runs on loopback in one go, from inputs the script writes itself
into a temporary folder (no downloads):

* ``large``: ``--count`` copies of a 2000 x 1800, 16-bit CR (uncompressed Explicit VR Little
  Endian, 7.2 MB); ``small``: copies of a 140 x 140 CR (39 KB).  Every copy has its own SOP
  Instance UID; each set is two studies of ``count / 2`` instances.

Receivers, each started fresh as its own process, with its own empty output folder, per run:

* ``ours``: ``xiqa.service.listener.Listener`` + ``Spool`` + ``NodeMetrics``, exactly as
  ``xiqa serve`` wires them (settings default but port 0, bind 127.0.0.1, no free-space reserve),
  in a subprocess of this script, so that neither the sender nor this driver share its GIL;
* ``storescp``: dcmtk, no fsync (the speed reference);
* ``storescp-sync``: dcmtk with ``-xcr "sync #p/#f #p" -xs``: an fsync of file and folder per
  instance, before the response (the durable reference; it forks ``sh`` + ``sync`` per file);
* ``plain``: a minimal pynetdicom SCP, ``encoded_dataset()`` -> ``.part`` -> fsync -> rename ->
  folder fsync, default PDU size (the ``pyn-enc-fsync`` receiver of
  ``/work/shared/reference/ingest-baseline.md``), also in a subprocess;
* ``plain-128k`` (opt-in): the same with ``maximum_pdu_size = 131072``, ours' default.

storescp gets ``--fork`` when several associations arrive in parallel, as in the baseline.
The sender is dcmtk ``storescu -R`` with ``TCP_NODELAY=1`` (as is storescp), either one
process with every file or ``P`` concurrent processes with ``files[i::P]``.  The clock runs
from starting the storescu process(es) until the last exits.  Receiver CPU is utime + stime (and
that of reaped children) over its /proc process tree, with the system part shown apart.

``--settle`` (default 3 s) is the least time from the previous run's cleanup (its files deleted,
then ``os.sync()``) to the start of the clock, whatever the receiver's start-up takes.  On a VM
with free page reporting (virtio-balloon, as on this Firecracker box) memory freed more than ~2 s
ago goes back to the host, and filling the page cache from it costs up to 8x more system time
(0.06 s vs 0.5 s for 288 MB, measured here).  Without the settle, receivers that start in 0.5 s
(storescp, the plain SCP) often wrote into memory the previous run had just freed, while ours,
whose start-up imports the whole graph (~10 s), never did.  Even so, the large set's system time
still varies up to 2x from run to run, for every receiver, nearly all of it in the kernel's copy
into page-cache folios (``perf``): hence interleaved runs and medians.

Runs are interleaved (repeat > set > parallel > receiver, receiver order rotated each repeat);
the table shows medians.

Each run must store exactly ``count`` instances with the expected SOP Instance UIDs, storescu
must report no failure, and ours' spool is read back (every file's SOP Instance and Study UIDs,
no partial files, pixel data of the first and last instance byte-identical to what was sent);
any mismatch stops the benchmark with exit status 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RECEIVERS = ("ours", "storescp", "storescp-sync", "plain")
OPTIONAL_RECEIVERS = ("plain-128k",)
REFERENCES = ("storescp", "storescp-sync", "plain", "plain-128k")
SHAPES = {"large": (2000, 1800), "small": (140, 140)}
AE_OURS, AE_OTHERS = "XIQA", "ANY-SCP"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
START_TIMEOUT = 180.0  # ours imports the whole graph (torch, holoscan): ~10 s on a busy 2-core box


class BenchmarkFailed(Exception):
    """A run lost, mangled or refused an instance, or a process misbehaved."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSet:
    name: str
    paths: list[Path]
    sop_uids: list[str]
    study_uids: list[str]  # per instance
    total_bytes: int
    pixel_bytes: int


def make_inputs(folder: Path, name: str, count: int) -> InputSet:
    """``count`` copies of one CR instance, unique SOP Instance UIDs, in two studies."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from xiqa.dicom_fixtures.instances import CR_IMAGE_STORAGE, InstanceVariant, PatientStudy, build_instance

    rows, columns = SHAPES[name]
    variant = InstanceVariant(f"bench_{name}", "CR", CR_IMAGE_STORAGE, "MONOCHROME1", 16,
                              ExplicitVRLittleEndian, "window")
    gradient = np.linspace(0.1, 0.9, rows * columns, dtype=np.float32).reshape(rows, columns)
    noise = np.random.default_rng(7).random((rows, columns), dtype=np.float32) * 0.1
    studies = [generate_uid() for _ in range(2)]
    series = [generate_uid() for _ in range(2)]
    identity = PatientStudy("BENCH^INGEST", "INGEST1", "19700101", "O", studies[0], "20260101", "120000",
                            "ING1", "1")
    ds = build_instance(gradient + noise, variant, identity, 1, 1, ("ingest", name))
    folder.mkdir(parents=True, exist_ok=True)
    paths, sop_uids, study_uids = [], [], []
    for index in range(count):
        study = 0 if index < count // 2 else 1
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = studies[study], series[study]
        ds.InstanceNumber = index + 1
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sop_uids.append(uid)
        study_uids.append(studies[study])
    if len(set(sop_uids)) != count:
        raise BenchmarkFailed(f"{name}: SOP Instance UIDs are not unique")
    return InputSet(name, paths, sop_uids, study_uids, sum(p.stat().st_size for p in paths),
                    len(ds.PixelData))


# --------------------------------------------------------------------------- receivers (subprocess side)


def _serve_until_stdin_closes(start, stop) -> None:
    """Run an SCP in this process: print ``PORT n``, serve until stdin closes, print the tally."""
    port, tally = start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()
    stop()
    stored, errors = tally()
    print(f"STORED {stored} ERRORS {errors}", flush=True)


def serve_ours(out: Path) -> None:
    from xiqa.service.listener import Listener
    from xiqa.service.metrics import NodeMetrics
    from xiqa.service.settings import ServeSettings
    from xiqa.service.spool import Spool

    settings = ServeSettings(storage=out / "storage", output=out / "output", port=0, bind="127.0.0.1",
                             min_free_bytes=0)
    spool = Spool(settings.storage, settings.min_free_bytes)
    metrics = NodeMetrics()
    stored: list = []  # list.append is atomic: the node's worker.add stands here
    listener = Listener(settings, spool, metrics, stored.append)

    def start():
        listener.start()
        return listener.port, tally

    def tally():
        refused = sum(sample.value for family in metrics.instances_refused.collect()
                      for sample in family.samples if sample.name.endswith("_total"))
        return len(stored), int(refused)

    _serve_until_stdin_closes(start, listener.stop)


def serve_plain(out: Path, max_pdu: int | None) -> None:
    """The baseline's ``pyn-enc-fsync``: encoded dataset, temp file, fsync, rename, folder fsync."""
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    classes = {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
               "1.2.840.10008.5.1.4.1.1.7"}
    out.mkdir(parents=True, exist_ok=True)
    counts = {"stored": 0, "errors": 0}
    lock = threading.Lock()

    def on_store(event) -> int:
        try:
            data = event.encoded_dataset()
            uid = str(event.request.AffectedSOPInstanceUID)
            temporary, final = out / f"{uid}.dcm.part", out / f"{uid}.dcm"
            with open(temporary, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.rename(temporary, final)
            folder = os.open(out, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except Exception:  # noqa: BLE001 - counted and answered as a failure
            with lock:
                counts["errors"] += 1
            return 0xC000
        with lock:
            counts["stored"] += 1
        return 0x0000

    ae = AE(AE_OTHERS)
    if max_pdu is not None:
        ae.maximum_pdu_size = max_pdu
    ae.maximum_associations = 16
    for context in StoragePresentationContexts:
        if context.abstract_syntax in classes:
            ae.add_supported_context(context.abstract_syntax)
    ae.add_supported_context(Verification)
    server = None

    def start():
        nonlocal server
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return server.server_address[1], lambda: (counts["stored"], counts["errors"])

    _serve_until_stdin_closes(start, ae.shutdown)


# --------------------------------------------------------------------------- receivers (driver side)


def _cpu_ticks_of_tree(root: int) -> tuple[int, int]:
    """(user, system) ticks, reaped children's included, of ``root`` and its live or zombie descendants."""
    parent_of, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(b")") + 2:].split()
        parent_of[int(entry)] = int(fields[1])
        utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
        ticks[int(entry)] = (utime + cutime, stime + cstime)
    user = system = 0
    stack = [root]
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    while stack:
        pid = stack.pop()
        user += ticks.get(pid, (0, 0))[0]
        system += ticks.get(pid, (0, 0))[1]
        stack.extend(children.get(pid, []))
    return user, system


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _echo(port: int, called: str) -> bool:
    done = subprocess.run(["echoscu", "-to", "5", "-aec", called, "127.0.0.1", str(port)], env=NODELAY,
                          capture_output=True, timeout=30)
    return done.returncode == 0


class Receiver:
    """One started receiver process: its port, AE title, output folder and CPU meter."""

    def __init__(self, kind: str, out: Path, parallel: int) -> None:
        self.kind, self.out = kind, out
        self.called = AE_OURS if kind == "ours" else AE_OTHERS
        out.mkdir(parents=True)
        self.log = open(out.parent / f"{out.name}.log", "w+b")  # noqa: SIM115 - closed in stop()
        if kind.startswith("storescp"):
            self.port = _free_port()
            command = ["storescp", "-od", str(out)]
            if parallel > 1:
                command.append("--fork")
            if kind == "storescp-sync":
                command += ["-xcr", "sync #p/#f #p", "-xs"]
            self.process = subprocess.Popen(command + [str(self.port)], env=NODELAY,
                                            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        else:
            self.process = subprocess.Popen([sys.executable, __file__, "_scp", kind, str(out)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
            self.port = int(self._line("PORT"))
        deadline = time.monotonic() + 30
        while not _echo(self.port, self.called):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise BenchmarkFailed(f"{kind} did not answer C-ECHO on port {self.port}: {self.log_text()}")
            time.sleep(0.1)

    def _line(self, key: str) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith(key + " "):
            self.kill()
            raise BenchmarkFailed(f"{self.kind}: expected {key!r}, got {line!r}: {self.log_text()}")
        return line.split(" ", 1)[1].strip()

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the receiver's process tree so far."""
        user, system = _cpu_ticks_of_tree(self.process.pid)
        return user / os.sysconf("SC_CLK_TCK"), system / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def stop(self) -> tuple[int, int] | None:
        """Stop it; (stored, errors) as the Python SCPs count them, None for storescp."""
        try:
            if self.kind.startswith("storescp"):
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=30)
                return None
            self.process.stdin.close()
            tally = self._line("STORED").split()
            self.process.wait(timeout=START_TIMEOUT)  # torch and holoscan unload slowly on a busy box
            return int(tally[0]), int(tally[2])
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- checks


def verify(kind: str, out: Path, inputs: InputSet) -> None:
    """Exactly the instances sent, each once; for ours, read back from the spool."""
    expected = set(inputs.sop_uids)
    if kind == "ours":
        _verify_spool(out / "storage", inputs)
        return
    names = [path.name for path in out.iterdir() if path.is_file()]
    if kind.startswith("storescp"):  # <modality>.<SOP Instance UID>
        found = [name.split(".", 1)[1] if "." in name else name for name in names]
    else:  # <SOP Instance UID>.dcm
        found = [name.removesuffix(".dcm") for name in names]
    if len(found) != len(inputs.paths) or set(found) != expected:
        raise BenchmarkFailed(f"{kind}: stored {len(found)} files for {len(inputs.paths)} sent; "
                              f"{len(expected - set(found))} missing, {len(set(found) - expected)} "
                              f"unexpected: {sorted(names)[:5]}")


def _verify_spool(storage: Path, inputs: InputSet) -> None:
    from pydicom import dcmread
    from xiqa.service.spool import INCOMING, RECEIVING, safe_name

    incoming = storage / INCOMING
    files = sorted(path for path in incoming.rglob("*") if path.is_file())
    partial = [path for path in files if path.suffix != ".dcm"] + list((storage / RECEIVING).iterdir())
    if partial:
        raise BenchmarkFailed(f"ours: left files that are not instances in the spool: {partial[:5]}")
    studies = {safe_name(uid) for uid in inputs.study_uids}
    if {path.parent.name for path in files} != studies or len(files) != len(inputs.paths):
        raise BenchmarkFailed(f"ours: {len(files)} files in {len({p.parent for p in files})} study folders, "
                              f"expected {len(inputs.paths)} in {len(studies)}")
    expected = dict(zip(inputs.sop_uids, inputs.study_uids, strict=True))
    seen = set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        uid, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        if path.name != f"{safe_name(uid)}.dcm" or expected.get(uid) != study or uid in seen:
            raise BenchmarkFailed(f"ours: {path} holds SOP {uid} of study {study}: not what was sent")
        if path.stat().st_size < inputs.pixel_bytes:
            raise BenchmarkFailed(f"ours: {path} is {path.stat().st_size} bytes, shorter than its pixels")
        seen.add(uid)
    for index in (0, len(inputs.paths) - 1):
        sent = dcmread(inputs.paths[index])
        study, uid = safe_name(inputs.study_uids[index]), safe_name(inputs.sop_uids[index])
        kept = dcmread(incoming / study / f"{uid}.dcm")
        if kept.PixelData != sent.PixelData or kept.SOPInstanceUID != sent.SOPInstanceUID:
            raise BenchmarkFailed(f"ours: instance {index} came back different from what was sent")


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    receiver: str
    set: str
    parallel: int
    repeat: int
    count: int
    bytes: int
    wall_s: float
    receiver_cpu_s: float
    receiver_sys_s: float
    sender_cpu_s: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def send(receiver: Receiver, inputs: InputSet, parallel: int,
         logs: Path) -> tuple[float, float, float, float]:
    """storescu(s) to ``receiver``: wall seconds, receiver CPU-s (all, system), sender CPU-s."""
    groups = [inputs.paths[index::parallel] for index in range(parallel)]
    base = ["storescu", "-R", "-aec", receiver.called, "127.0.0.1", str(receiver.port)]
    outputs = [open(logs / f"storescu-{index}.log", "w+b") for index in range(parallel)]  # noqa: SIM115
    try:
        cpu_before, children_before = receiver.cpu_seconds(), _children_cpu()
        started = time.perf_counter()
        senders = [subprocess.Popen(base + [str(path) for path in group], env=NODELAY,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                   for group, log in zip(groups, outputs, strict=True)]
        codes = [sender.wait(timeout=900) for sender in senders]
        wall = time.perf_counter() - started
        cpu_after = receiver.cpu_seconds()
        sender_cpu = _children_cpu() - children_before
        for code, log in zip(codes, outputs, strict=True):
            log.seek(0)
            text = log.read().decode(errors="replace")
            bad = [line for line in text.splitlines() if line[:2] in ("E:", "F:")]
            if code != 0 or bad:
                raise BenchmarkFailed(f"storescu -> {receiver.kind} exited {code}: {bad[:5] or text[-500:]}")
    finally:
        for log in outputs:
            log.close()
    return wall, sum(cpu_after) - sum(cpu_before), cpu_after[1] - cpu_before[1], sender_cpu


def run_once(kind: str, inputs: InputSet, parallel: int, repeat: int, scratch: Path, settle: float) -> Run:
    """One receiver, fresh, on one set; the clock starts ``settle`` s or more after the previous run's
    files were deleted and synced (see ``--settle``)."""
    out = scratch / f"out-{kind}-{inputs.name}-p{parallel}-r{repeat}"
    os.sync()
    synced = time.monotonic()
    receiver = Receiver(kind, out, parallel)
    time.sleep(max(0.0, settle - (time.monotonic() - synced)))
    try:
        wall, receiver_cpu, receiver_sys, sender_cpu = send(receiver, inputs, parallel, scratch)
        verify(kind, out, inputs)  # before stopping: on disk once the sender has its answers
        tally = receiver.stop()
    except BaseException:
        receiver.kill()
        print(f"--- {kind} log:\n{receiver.log_text() if not receiver.log.closed else ''}", file=sys.stderr)
        raise
    count = len(inputs.paths)
    if tally is not None and tally != (count, 0):
        raise BenchmarkFailed(f"{kind}: the SCP counted stored={tally[0]} errors={tally[1]} for {count} sent")
    shutil.rmtree(out)
    return Run(kind, inputs.name, parallel, repeat, count, inputs.total_bytes, wall, receiver_cpu,
               receiver_sys, sender_cpu)


# --------------------------------------------------------------------------- report


def summarise(runs: list[Run]) -> list[dict]:
    rows = []
    keys = sorted({(run.set, run.parallel) for run in runs}, key=lambda key: (key[0] != "large", key[1]))
    order = {name: index for index, name in enumerate(RECEIVERS + OPTIONAL_RECEIVERS)}
    for data_set, parallel in keys:
        cell = [run for run in runs if (run.set, run.parallel) == (data_set, parallel)]
        for kind in sorted({run.receiver for run in cell}, key=order.get):
            mine = [run for run in cell if run.receiver == kind]
            wall = statistics.median(run.wall_s for run in mine)
            count, size = mine[0].count, mine[0].bytes
            rows.append({
                "receiver": kind, "set": data_set, "parallel": parallel, "n": len(mine), "count": count,
                "bytes": size, "wall_s_median": wall, "wall_s_min": min(run.wall_s for run in mine),
                "inst_s": count / wall, "inst_s_best": count / min(run.wall_s for run in mine),
                "mb_s": size / 1e6 / wall,
                "receiver_cpu_s": statistics.median(run.receiver_cpu_s for run in mine),
                "receiver_sys_s": statistics.median(run.receiver_sys_s for run in mine),
                "sender_cpu_s": statistics.median(run.sender_cpu_s for run in mine),
            })
    for row in rows:
        ours = next((other for other in rows if other["receiver"] == "ours"
                     and (other["set"], other["parallel"]) == (row["set"], row["parallel"])), None)
        row["ours_ratio"] = ours["inst_s"] / row["inst_s"] if ours and row["receiver"] != "ours" else None
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'receiver':<14} {'set':<6} {'par':>3} {'n':>2} {'count':>5} {'MB':>7} {'wall s med':>10} "
              f"{'(min)':>7} {'inst/s':>7} {'(best)':>7} {'MB/s':>6} {'recv CPU-s':>10} {'(sys)':>6} "
              f"{'send CPU-s':>10} {'ours / it':>9}")
    print(header)
    print("-" * len(header))
    previous = None
    for row in rows:
        if previous is not None and (row["set"], row["parallel"]) != previous:
            print()
        previous = (row["set"], row["parallel"])
        ratio = "" if row["ours_ratio"] is None else f"{row['ours_ratio']:.2f}"
        print(f"{row['receiver']:<14} {row['set']:<6} {row['parallel']:>3} {row['n']:>2} {row['count']:>5} "
              f"{row['bytes'] / 1e6:>7.1f} {row['wall_s_median']:>10.3f} {row['wall_s_min']:>7.3f} "
              f"{row['inst_s']:>7.1f} {row['inst_s_best']:>7.1f} {row['mb_s']:>6.1f} "
              f"{row['receiver_cpu_s']:>10.2f} {row['receiver_sys_s']:>6.2f} {row['sender_cpu_s']:>10.2f} "
              f"{ratio:>9}")
    cells = sorted({(row["set"], row["parallel"]) for row in rows},
                   key=lambda key: (key[0] != "large", key[1]))
    references = [kind for kind in REFERENCES if any(row["receiver"] == kind for row in rows)]
    if not any(row["receiver"] == "ours" for row in rows) or not references:
        return
    print("\nours / reference, median inst/s:")
    print(f"{'reference':<14} " + " ".join(f"{f'{s} p{p}':>10}" for s, p in cells))
    for kind in references:
        values = []
        for data_set, parallel in cells:
            row = next((r for r in rows
                        if (r["receiver"], r["set"], r["parallel"]) == (kind, data_set, parallel)), None)
            values.append(f"{row['ours_ratio']:>10.2f}" if row and row["ours_ratio"] else f"{'-':>10}")
        print(f"{kind:<14} " + " ".join(values))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_scp"]:  # a receiver subprocess of this script
        kind, out = argv[1], Path(argv[2])
        if kind == "ours":
            serve_ours(out)
        else:
            serve_plain(out, 131072 if kind == "plain-128k" else None)
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="instances per set (even; default 100)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sets", nargs="+", choices=sorted(SHAPES), default=["large", "small"])
    parser.add_argument("--receivers", nargs="+", choices=RECEIVERS + OPTIONAL_RECEIVERS,
                        default=list(RECEIVERS))
    parser.add_argument("--json", type=Path, default=None, help="write every run and the summary here")
    parser.add_argument("--scratch", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds from the previous run's cleanup to the clock's start (default 3; see "
                             "below)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 instances, 1 repeat, no settle")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeats, args.settle = 8, 1, 0.0
    if args.count < 2 or args.count % 2 or min(args.parallel) < 1 or args.count < max(args.parallel):
        parser.error("--count must be even, at least 2 and at least the largest --parallel")
    for tool in ("storescp", "storescu", "echoscu"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} (dcmtk) is not on PATH")

    import pydicom
    import pynetdicom

    dcmtk = subprocess.run(["storescp", "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, pydicom "
          f"{pydicom.__version__}, pynetdicom {pynetdicom.__version__}, dcmtk {dcmtk}; "
          f"settle {args.settle} s; load {os.getloadavg()[0]:.2f}", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="xiqa-ingest-", dir=args.scratch) as scratch_name:
        scratch = Path(scratch_name)
        started = time.perf_counter()
        sets = {name: make_inputs(scratch / "in" / name, name, args.count) for name in args.sets}
        for inputs in sets.values():
            print(f"# {inputs.name}: {args.count} x {inputs.total_bytes / args.count / 1e6:.3f} MB CR "
                  f"{'x'.join(map(str, SHAPES[inputs.name]))} = {inputs.total_bytes / 1e6:.1f} MB, 2 studies "
                  f"(written in {time.perf_counter() - started:.1f} s)", flush=True)
        plan = itertools.product(range(args.repeats), args.sets, args.parallel)
        try:
            for repeat, name, parallel in plan:
                shift = repeat % len(args.receivers)
                for kind in args.receivers[shift:] + args.receivers[:shift]:
                    run = run_once(kind, sets[name], parallel, repeat, scratch, args.settle)
                    runs.append(run)
                    print(f"  r{repeat} {name:<5} p{parallel} {kind:<14} {run.wall_s:7.3f} s "
                          f"{run.count / run.wall_s:7.1f} inst/s  recv {run.receiver_cpu_s:5.2f} CPU-s "
                          f"({run.receiver_sys_s:4.2f} sys)  send {run.sender_cpu_s:5.2f} CPU-s", flush=True)
        except BenchmarkFailed as failure:
            print(f"\nFAILED: {failure}", file=sys.stderr)
            return 1
        total = time.perf_counter() - started
    rows = summarise(runs)
    print(f"\n# medians of {args.repeats} run(s) per row, {total:.0f} s in all; "
          f"load {os.getloadavg()[0]:.2f}; every run stored exactly {args.count} instances")
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()},
                                         "runs": [asdict(run) for run in runs], "summary": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
