"""Memory of ``xiqa serve`` (what deploy/kubernetes sizes its requests and limits from) and where it writes.

    .venv/bin/python benchmarks/serve_memory.py [--count 4] [--size 2000 2800] [--saliency gradcam]
        [--trace-writes] [--json OUT]

Writes ``--count`` synthetic radiographs of ``--size`` pixels (smallest and largest side; real CR/DX
are 2000-3000 px) into a temporary folder, starts ``xiqa serve`` on a free loopback port
(study timeout 1 s, CPU), sends them as one study and waits until each has its outputs. Printed:

* ``idle``: resident memory once the node answers C-ECHO (models and summary LLM loaded);
* ``peak``: the node's high-water mark (VmHWM) after the study, and its ratio to ``idle``;
* ``health``: wall time and peak RSS of one ``xiqa health`` process (what each probe costs).

With ``--trace-writes`` the node runs under ``strace -f`` and the script lists every folder the
node created, wrote or renamed a file in, outside its storage and output folders: what a
read-only root filesystem must still leave writable (slower; its memory figures are not printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

_WRITE_CALL = re.compile(r'(?:openat|open|creat)\((?:AT_FDCWD, )?"(?P<path>[^"]+)", (?P<flags>[A-Z_|]+)')
_NAME_CALL = re.compile(r'(?:rename|renameat2?|mkdir|mkdirat|unlink|unlinkat)'
                        r'\((?:AT_FDCWD, )?"(?P<path>[^"]+)"')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def echo(port: int) -> bool:
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title="XIQA")
    if not association.is_established:
        return False
    association.release()
    return True


def send(port: int, paths: list[Path]) -> None:
    ae = AE(ae_title="BENCH")
    metas = [dcmread(path, stop_before_pixels=True) for path in paths]
    for context in {(str(m.SOPClassUID), str(m.file_meta.TransferSyntaxUID)) for m in metas}:
        ae.add_requested_context(*context)
    association = ae.associate("127.0.0.1", port, ae_title="XIQA")
    if not association.is_established:
        raise SystemExit("no association with the node")
    for path in paths:
        status = association.send_c_store(path)
        if status.get("Status") != 0:
            raise SystemExit(f"C-STORE of {path.name} answered {status.get('Status')}")
    association.release()


def written_folders(trace: Path, exclude: list[Path]) -> list[str]:
    """Folders of files the traced process opened for writing, created, renamed or removed."""
    folders: set[str] = set()
    for line in trace.read_text(errors="replace").splitlines():
        if "= -1" in line:
            continue
        match = _WRITE_CALL.search(line)
        if match and not re.search(r"O_WRONLY|O_RDWR|O_CREAT", match["flags"]):
            continue
        match = match or _NAME_CALL.search(line)
        if match is None or match["path"].startswith(("/dev/", "/proc/", "/sys/")):
            continue
        path = Path(match["path"])
        if any(path.is_relative_to(folder) for folder in exclude):
            continue
        folders.add(str(path.parent))
    return sorted(folders)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4,
                        help="radiographs in the study (default: %(default)s)")
    parser.add_argument("--size", type=int, nargs=2, default=(2000, 2800), metavar=("MIN", "MAX"),
                        help="smallest and largest side in pixels (default: %(default)s)")
    parser.add_argument("--saliency", default="gradcam", help="default: %(default)s")
    parser.add_argument("--trace-writes", action="store_true", help="run the node under strace -f")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.trace_writes and shutil.which("strace") is None:
        parser.error("--trace-writes needs strace (Debian package strace)")

    from xiqa.dicom_fixtures.generate import write_fixture_set

    figures: dict[str, object] = {"count": args.count, "size": list(args.size), "saliency": args.saliency}
    with tempfile.TemporaryDirectory(prefix="xiqa-serve-memory-") as temporary:
        root = Path(temporary)
        write_fixture_set(root / "fixtures", args.count, seed=11, size_range=tuple(args.size))
        sources = sorted((root / "fixtures" / "dicom").rglob("*.dcm"))
        port = free_port()
        command = [sys.executable, "-m", "xiqa.cli", "serve", "--storage", str(root / "storage"),
                   "--output", str(root / "output"), "--port", str(port), "--bind", "127.0.0.1",
                   "--study-timeout", "1", "--min-free-bytes", "0", "--device", "cpu",
                   "--saliency", args.saliency]
        trace = root / "strace.txt"
        if args.trace_writes:
            command = ["strace", "-f", "-qq", "-o", str(trace), "-e",
                       "trace=open,openat,creat,rename,renameat,renameat2,mkdir,mkdirat,unlink,unlinkat",
                       *command]
        log = open(root / "node.log", "w")  # noqa: SIM115 - closed below
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        # under strace the node is a child of strace: measure the python process itself
        started = time.perf_counter()
        while not echo(port):
            if node.poll() is not None:
                raise SystemExit(f"xiqa serve exited: {(root / 'node.log').read_text()[-2000:]}")
            time.sleep(0.5)
        figures["start_seconds"] = round(time.perf_counter() - started, 1)
        pid = node.pid
        if args.trace_writes:
            pid = int(subprocess.run(["pgrep", "-P", str(node.pid)], capture_output=True, text=True,
                                     check=True).stdout.split()[0])
        figures["idle_rss_mib"] = round(status_kib(pid, "VmRSS") / 1024)

        started = time.perf_counter()
        send(port, sources)
        while len(list((root / "output").glob("*/report.json"))) < len(sources):
            if node.poll() is not None:
                raise SystemExit(f"xiqa serve exited: {(root / 'node.log').read_text()[-2000:]}")
            time.sleep(0.5)
        figures["study_seconds"] = round(time.perf_counter() - started, 1)
        figures["peak_rss_mib"] = round(status_kib(pid, "VmHWM") / 1024)
        figures["after_rss_mib"] = round(status_kib(pid, "VmRSS") / 1024)

        started = time.perf_counter()
        health = subprocess.Popen([sys.executable, "-m", "xiqa.cli", "health", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, wait_status, usage = os.wait4(health.pid, 0)
        health.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, not by Popen
        figures["health_seconds"] = round(time.perf_counter() - started, 2)
        figures["health_exit"] = health.returncode
        figures["health_peak_rss_mib"] = round(usage.ru_maxrss / 1024)

        os.kill(pid, signal.SIGTERM)  # the node itself, also when strace is its parent
        node.wait(timeout=300)
        log.close()
        if args.trace_writes:
            figures["written_outside_storage_and_output"] = written_folders(
                trace, [root / "storage", root / "output"])

    if args.trace_writes:
        print("folders written outside storage and output:")
        for folder in figures["written_outside_storage_and_output"]:
            print(f"  {folder}")
    else:
        print(f"{args.count} images of {args.size[0]}-{args.size[1]} px, saliency {args.saliency}")
        print(f"start to first C-ECHO  {figures['start_seconds']:7.1f} s")
        print(f"idle RSS               {figures['idle_rss_mib']:7d} MiB")
        print(f"peak RSS (VmHWM)       {figures['peak_rss_mib']:7d} MiB  "
              f"({figures['peak_rss_mib'] / figures['idle_rss_mib']:.2f} x idle)")
        print(f"RSS after the study    {figures['after_rss_mib']:7d} MiB")
        print(f"study                  {figures['study_seconds']:7.1f} s")
        print(f"xiqa health            {figures['health_seconds']:7.2f} s, peak RSS "
              f"{figures['health_peak_rss_mib']} MiB, exit {figures['health_exit']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
