"""The input gate on real frontal chests and on everything else, before (main's gate) and after.

    python benchmarks/gate.py --chest nih=FOLDER --chest hannover=FOLDER --chest openist=FOLDER \\
        [--other NAME=FOLDER ...] [--before-ref main]

Each ``--chest`` folder holds real frontal chest radiographs (PNG, JPEG or DICOM), each ``--other``
folder radiographs of anything else.  Built in: the NEMA WG04 plates and the other images of
pydicom's test data (``pydicom-data``), synthetic test patterns and screenshots, and xiqa's own
phantoms.  Every image is judged

- chests: with the tags a modality sets (Body Part Examined CHEST, View Position PA) and with no
  tags;
- the others: with a tag that names their own body part (OTHER where the file has none), with
  forged chest tags (CHEST, PA) and with no tags;

by main's gate (``git show REF:operators/{gate,chest_region}.py``, loaded beside this checkout's)
and by this checkout's.  Files the loader rejects (CT, MR, ultrasound: not a radiograph class) count
as refused, with the loader's reason; the tags of such a file cannot change that.

Printed: scored/refused per source and scenario, the refused frontal chests with their reasons
(and their by-eye features from data/real_labels), and the non-chest results.  By-eye labels
whose view is not frontal move a plate to the others.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def load_before(ref: str):
    """Main's gate module, from git, as package ``xiqa_before`` beside the current one."""
    folder = Path(tempfile.mkdtemp(prefix="gate_before_")) / "xiqa_before"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("gate", "chest_region", "case"):
        source = subprocess.run(
            ["git", "show", f"{ref}:operators/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("xiqa_before.gate")


def grid_of(path: Path) -> tuple[np.ndarray, tuple[int, int], object]:
    """The analysis grid, the source shape and the DICOM data set (None for PNG/JPEG)."""
    from xiqa.operators.loader import load_source_image
    from xiqa.operators.preprocess import to_network_input
    from xiqa.training.datasets import read_raster

    if path.suffix.lower() == ".dcm":
        source = load_source_image(path)
        return to_network_input(source.pixels)[0], source.pixels.shape, source.dataset
    pixels = read_raster(path)
    return to_network_input(pixels)[0], pixels.shape, None


def tagged(body_part: str | None, view: str | None):
    from pydicom import Dataset

    dataset = Dataset()
    if body_part:
        dataset.BodyPartExamined = body_part
    if view:
        dataset.ViewPosition = view
    return dataset


def synthetic_images() -> dict[str, np.ndarray]:
    """Test patterns and screenshot-like images: what a misrouted secondary capture looks like."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:1024] / 1024
    images = {
        "uniform grey": np.full((768, 1024), 0.5),
        "black": np.zeros((768, 1024)),
        "bars": (np.floor(xx * 8) % 2) * 0.8 + 0.1,
        "horizontal ramp": xx,
        "radial ramp": np.hypot(xx - 0.5, yy - 0.375),
        "uniform noise": rng.uniform(0, 1, (768, 1024)),
        "checkerboard": ((np.floor(xx * 16) + np.floor(yy * 16)) % 2) * 1.0,
        "smpte-like steps": np.floor(xx * 11) / 10,
    }
    for name, background in (("dark screenshot", 30), ("light screenshot", 240)):
        screen = np.full((768, 1024), background, np.uint8)  # OpenCV draws text on 8-bit images only
        ink = 255 - background
        cv2.rectangle(screen, (0, 0), (1023, 40), 128, -1)  # a title bar
        cv2.rectangle(screen, (0, 40), (180, 767), 80 if background < 128 else 200, -1)  # a side panel
        for row in range(80, 740, 26):
            cv2.putText(
                screen,
                "Patient  ID 12345  Study  CHEST PA  2026-05-01  Accepted",
                (200, row),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.6,
                ink,
                1,
                cv2.LINE_AA,
            )
        screen = screen / 255
        images[name] = screen
    return {name: np.clip(image, 0, 1).astype(np.float32) for name, image in images.items()}


def collect(pairs: list[str]) -> dict[str, list[Path]]:
    sources = {}
    for pair in pairs:
        name, _, folder = pair.partition("=")
        sources[name] = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return sources


def read_labels() -> dict[str, dict]:
    """The by-eye labels of the corpus sources (data/real_labels), by ``<source>_<file stem>``."""
    from xiqa.training.corpus import SOURCES
    from xiqa.training.corpus import read_labels as read_source_labels

    return {
        f"{source}_{Path(name).stem}": record
        for source in SOURCES
        for name, record in read_source_labels(source).items()
    }


def label_for(labels: dict[str, dict], source: str, path: Path) -> dict | None:
    return labels.get(f"{source}_{path.stem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chest", action="append", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--other", action="append", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--before-ref", default="main", help="git ref of the gate to compare with")
    parser.add_argument("--json", type=Path, default=None, help="write every decision here")
    args = parser.parse_args()

    import pydicom.data
    from xiqa.dicom_fixtures.phantom import render_phantom
    from xiqa.operators import gate as after
    from xiqa.operators.preprocess import to_network_input

    before = load_before(args.before_ref)
    labels = read_labels()
    chests = collect(args.chest)
    others = collect(args.other)
    # images: (group, source, name, grid, shape, dataset, own body part)
    items = []
    for source, paths in chests.items():
        for path in paths:
            label = label_for(labels, source, path)
            group = "other" if label and label.get("view") not in (None, "frontal") else "chest"
            items.append((group, source, path.name, path, None))
    for source, paths in others.items():
        items += [("other", source, path.name, path, None) for path in paths]
    wg04 = Path(pydicom.data.get_testdata_file("RG1_UNCR.dcm")).parent
    for path in sorted(wg04.glob("*.dcm")):
        items.append(
            ("chest" if path.name.startswith("RG1") else "other", "pydicom-data", path.name, path, None)
        )
    for name, image in synthetic_images().items():
        items.append(("other", "synthetic", name, None, image))
    rng = np.random.default_rng(7)
    for index in range(10):
        phantom = render_phantom(rng, int(rng.integers(400, 900)), int(rng.integers(400, 900)))
        items.append(("chest", "xiqa phantoms", f"phantom {index}", None, phantom.image))

    results = []
    for group, source, name, path, image in items:
        try:
            if path is not None:
                grid, shape, dataset = grid_of(path)
            else:
                grid, shape, dataset = to_network_input(image)[0], image.shape, None
        except Exception as error:  # noqa: BLE001 - the loader's refusal is the product's answer
            reason = f"rejected by the loader: {str(error).split(': ', 1)[-1]}"
            for scenario in ("chest tags", "no tags") + (("own body-part tag",) if group == "other" else ()):
                results.append(
                    {
                        "group": group,
                        "source": source,
                        "name": name,
                        "scenario": scenario,
                        "before_scored": False,
                        "before_reason": reason,
                        "after_scored": False,
                        "after_reason": reason,
                        "estimated": False,
                        "features": [],
                        "projection": None,
                        "icu": None,
                    }
                )
            continue
        own = str(dataset.get("BodyPartExamined", "") or "") if dataset is not None else ""
        scenarios = {"chest tags": tagged("CHEST", "PA"), "no tags": None}
        if group == "other":
            scenarios["own body-part tag"] = tagged(
                own if own and own.upper() not in after.CHEST_BODY_PARTS else "OTHER", None
            )
        for scenario, tags in scenarios.items():
            decided = {}
            for version, module in (("before", before), ("after", after)):
                if version == "after":
                    decision = module.judge_frontal_chest(tags, grid, source_shape=shape)
                else:
                    decision = module.judge_frontal_chest(tags, grid)
                decided[version] = decision
            label = label_for(labels, source, Path(name))
            results.append(
                {
                    "group": group,
                    "source": source,
                    "name": name,
                    "scenario": scenario,
                    "before_scored": decided["before"].frontal_chest,
                    "before_reason": decided["before"].reason,
                    "after_scored": decided["after"].frontal_chest,
                    "after_reason": decided["after"].reason,
                    "estimated": bool(decided["after"].frontal_chest and decided["after"].region.estimated),
                    "features": (label or {}).get("features", []),
                    "projection": (label or {}).get("projection"),
                    "icu": (label or {}).get("icu"),
                }
            )
    report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: list[dict]) -> None:
    table = collections.defaultdict(lambda: [0, 0, 0, 0])  # n, before scored, after scored, estimated
    for row in results:
        cell = table[(row["group"], row["source"], row["scenario"])]
        cell[0] += 1
        cell[1] += row["before_scored"]
        cell[2] += row["after_scored"]
        cell[3] += row["estimated"]
    print(
        f"{'group':6} {'source':15} {'scenario':18} {'n':>5}  {'before scored':>14}  {'after scored':>14}  "
        f"{'estimated':>9}"
    )
    for (group, source, scenario), (n, was, now, estimated) in sorted(table.items()):
        print(
            f"{group:6} {source:15} {scenario:18} {n:5}  {was:6} ({was / n:6.1%})  {now:6} ({now / n:6.1%})  "
            f"{estimated:9}"
        )
    for group, goal in (("chest", "scored"), ("other", "refused")):
        for scenario in sorted({row["scenario"] for row in results if row["group"] == group}):
            rows = [
                r
                for r in results
                if r["group"] == group
                and r["scenario"] == scenario
                and r["source"] not in ("xiqa phantoms", "synthetic")
            ]
            if not rows:
                continue
            was = sum(r["before_scored"] for r in rows)
            now = sum(r["after_scored"] for r in rows)
            if goal == "refused":
                was, now = len(rows) - was, len(rows) - now
            print(
                f"real {group} images {goal}, {scenario}: before {was}/{len(rows)} "
                f"({was / len(rows):.1%}), after {now}/{len(rows)} ({now / len(rows):.1%})"
            )
    features = collections.defaultdict(lambda: [0, 0])
    for row in results:
        if row["group"] == "chest" and row["scenario"] == "chest tags":
            for feature in row["features"] + (["icu"] if row["icu"] else []):
                features[feature][0] += 1
                features[feature][1] += row["estimated"]
    if features:
        print("\nby-eye features of the real frontal chests (chest tags): n, scored with an estimated region")
        for feature, (n, estimated) in sorted(features.items()):
            print(f"  {feature:18} {n:4}  {estimated:4}")
    print("\nrefused frontal chests (after):")
    for row in results:
        if row["group"] == "chest" and not row["after_scored"]:
            print(
                f"  {row['source']}/{row['name']} [{row['scenario']}] {', '.join(row['features'])}: "
                f"{row['after_reason']}"
            )
    print("\nnon-chest images scored (after):")
    for row in results:
        if row["group"] == "other" and row["after_scored"]:
            print(
                f"  {row['source']}/{row['name']} [{row['scenario']}]"
                f"{' (estimated region)' if row['estimated'] else ''}"
            )
    print("\nnon-chest images, reasons (after, no tags):")
    for row in results:
        if row["group"] == "other" and row["scenario"] == "no tags":
            print(f"  {row['source']}/{row['name']}: {row['after_reason']}")


if __name__ == "__main__":
    main()
