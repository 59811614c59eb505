"""The reliability and security suite of ``xiqa serve`` at full size, and its summary table.

    .venv/bin/python benchmarks/reliability.py [--scale full|ci] [--load-instances N] [--kills N]
        [--corpus N] [--json OUT]

Runs ``tests/reliability`` (marker ``reliability``) in a pytest subprocess with
``XIQA_RELIABILITY_SCALE`` (default ``full``: 1,000 C-STOREs from four concurrent
associations with processing on, 10 SIGKILLs of a node forwarding to Orthanc, 216 mutants
through ``xiqa analyze`` and through the listener, 500 straight into the loader), then prints
one table from the figures the tests recorded.  Every figure comes from the same run as the
pass/fail verdicts: a test that measured ``lost > 0`` has also failed.  Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sum(figures: dict, key: str, *scenarios: str) -> int:
    return sum(int(figures.get(scenario, {}).get(key, 0)) for scenario in scenarios)


def summary_rows(figures: dict, passed: bool) -> list[tuple[str, str]]:
    load, crash = figures.get("load", {}), figures.get("crash", {})
    abuse = figures.get("association abuse", {}).get("faults survived", 0)
    storage = figures.get("full disk", {}).get("faults survived", 0)
    name = lambda scenario: scenario.split(": ")[1]  # noqa: E731
    bad = ("bad input: loader", "bad input: xiqa analyze", "bad input: listener")
    rows = [
        ("load held", f"{load.get('result sets', 0)} of {load.get('instances', 0)} instances from "
                      f"{load.get('associations', 0)} associations ({load.get('storescu associations', 0)} "
                      f"storescu), {load.get('studies', 0)} studies"),
        ("  received", f"{load.get('received inst/s', 0)} instances/s"),
        ("  processed", f"{load.get('processed images/min', 0)} images/min"),
        ("  server peak RSS", f"{load.get('peak rss bytes', 0) / 2**20:.0f} MiB"),
        ("  queue depth", f"max {load.get('max queue depth', 0):.0f}; over time (s, depth): "
                          + " ".join(f"{t:.0f}:{d:.0f}" for t, d in load.get("queue depth over time", []))),
        ("faults survived", f"{crash.get('kills', 0)} kill -9 {crash.get('phases', {})}, "
                            f"{abuse} association abuses, {storage} storage faults"),
        ("  crash stream", f"{crash.get('acknowledged', 0)} acknowledged, {crash.get('result sets', 0)} "
                           f"result sets, {crash.get('orthanc instances', 0)} instances in Orthanc; "
                           f"{crash.get('unacknowledged', 0)} unacknowledged sends, "
                           f"{crash.get('unacknowledged missing', 0)} of them missing"),
        ("bad inputs tried", " + ".join(f"{figures.get(s, {}).get('tried', 0)} {name(s)}" for s in bad)
                             + " = " + str(_sum(figures, "tried", *bad))),
        ("  rejected / processed", ", ".join(
            f"{name(s)} {figures.get(s, {}).get('rejected', 0)} / "
            f"{figures.get(s, {}).get('loaded', figures.get(s, {}).get('processed', 0))}" for s in bad)),
        ("lost", str(_sum(figures, "lost", "load", "crash"))),
        ("duplicated", str(_sum(figures, "duplicated", "load")
                           + max(0, crash.get("orthanc instances", 0) - 3 * crash.get("result sets", 0)))),
        ("crashes", str(_sum(figures, "crashes", *bad))),
        ("hangs", str(_sum(figures, "hangs", *bad))),
        ("PHI hits", str(_sum(figures, "phi_hits", "load", "crash", *bad))),
        ("world-readable files", str(load.get("world-readable files", 0))),
        ("suite", "passed" if passed else "FAILED (see the pytest output above)"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("full", "ci"), default="full", help="default: %(default)s")
    parser.add_argument("--load-instances", type=int, help="instead of the scale's")
    parser.add_argument("--kills", type=int, help="instead of the scale's")
    parser.add_argument("--corpus", type=int, help="mutants through analyze and the listener, instead")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        figures_path = Path(folder) / "figures.json"
        env = {**os.environ, "XIQA_RELIABILITY_SCALE": args.scale,
               "XIQA_RELIABILITY_FIGURES": str(figures_path)}
        for key in ("load_instances", "kills", "corpus"):
            if getattr(args, key) is not None:
                env[f"XIQA_RELIABILITY_{key.upper()}"] = str(getattr(args, key))
        result = subprocess.run([sys.executable, "-m", "pytest", "tests/reliability", "-m", "reliability",
                                 "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env)
        figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, sort_keys=True))
    rows = summary_rows(figures, result.returncode == 0)
    width = max(len(name) for name, _ in rows)
    print(f"\nxiqa serve reliability ({args.scale} scale)")
    print(f"| {'figure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
