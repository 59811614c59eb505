"""Build data/real_cxr (backgrounds and evaluation radiographs) from the public sources it names,
or with ``--corpus`` the whole labelled corpus of every source (``xiqa.training.corpus``).

    python scripts/import_real_cxr.py --hannover MIRROR
    python scripts/import_real_cxr.py --corpus DIR --hannover MIRROR --nih MIRROR

MIRROR is a bare git directory of the public repository (any clone works): the
files are read at the pinned commits below with ``git show``, resized so the
longer side is at most ``MAX_SIDE`` pixels, and written as 8-bit PNG with a
manifest that records source, commit, path, licence and split for each one.
Splits are by patient, so no patient's images are in two splits.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
from xiqa.training.corpus import build_corpus, git_show, shrink

HANNOVER = {
    "repository": "https://github.com/ml-workgroup/covid-19-image-repository",
    "commit": "ad7ab099b425f16e06bba22322336b7d6a732965",
    "licence": "CC-BY-3.0",
    "licence_file": "LICENSE",
    "attribution": "Hannover Medical School, Institute for Diagnostic and Interventional Radiology "
    "(Winther, Laser, Gerbel et al., COVID-19 Image Repository, doi:10.6084/m9.figshare.12275009)",
}
# Chosen by eye from contact sheets of all 243 Hannover images: frontal plates with no visible foreign
# body (no lines, leads, electrodes, devices, jewellery); markers and text may be present.
HANNOVER_CLEAN = (
    "0",
    "7",
    "8",
    "12",
    "13",
    "17",
    "23",
    "28",
    "35",
    "43",
    "44",
    "45",
    "59",
    "60",
    "71",
    "75",
    "78",
    "87",
    "95",
    "114",
    "117",
    "120",
    "130",
    "133",
    "135",
    "137",
    "153",
    "155",
    "162",
    "165",
    "166",
    "178",
    "181",
    "183",
    "184",
    "193",
    "194",
    "196",
    "206",
    "217",
    "220",
    "224",
    "226",
    "231",
    "235",
    "242",
)
# Plates with clearly visible devices, for the per-device evaluation (never used for training).
HANNOVER_DEVICES = ("20", "230", "233", "158", "24", "97", "125", "240")
HELD_OUT_PATIENT_SHARE, VALIDATION_PATIENT_SHARE = 0.22, 0.12


def patient_split(patient: str) -> str:
    """A stable split from a hash of the (pseudonymous) patient id of the source collection."""
    fraction = int(hashlib.sha256(patient.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if fraction < HELD_OUT_PATIENT_SHARE:
        return "held_out_clean"
    if fraction < HELD_OUT_PATIENT_SHARE + VALIDATION_PATIENT_SHARE:
        return "validation"
    return "train"


def import_hannover(mirror: Path, output: Path) -> list[dict]:
    commit = HANNOVER["commit"]
    rows = {
        row["image_id"]: row
        for row in csv.DictReader(io.StringIO(git_show(mirror, commit, "data.csv").decode()))
    }
    listing = subprocess.run(
        ["git", "--git-dir", str(mirror), "ls-tree", "--name-only", commit, "png/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    files = sorted(listing)
    entries = []
    for index_text in HANNOVER_CLEAN + HANNOVER_DEVICES:
        path = files[int(index_text)]
        image_id = Path(path).stem
        row = rows[image_id]
        pixels = cv2.imdecode(np.frombuffer(git_show(mirror, commit, path), np.uint8), cv2.IMREAD_GRAYSCALE)
        split = "held_out_devices" if index_text in HANNOVER_DEVICES else patient_split(row["patient_id"])
        name = f"hannover_{image_id}.png"
        cv2.imwrite(str(output / name), shrink(pixels))
        entries.append(
            {
                "id": f"hannover_{image_id}",
                "file": name,
                "split": split,
                "group": f"hannover_patient_{row['patient_id']}",
                "modality": row["modality"],
                "projection": row["projection"].upper(),
                "source": {k: HANNOVER[k] for k in ("repository", "commit")} | {"path": path},
                "licence": HANNOVER["licence"],
                "attribution": HANNOVER["attribution"],
                "original_size": [int(pixels.shape[1]), int(pixels.shape[0])],
            }
        )
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--hannover", type=Path, required=True, help="git dir of ml-workgroup/covid-19-image-repository"
    )
    parser.add_argument("--nih", type=Path, default=None, help="git dir of jrzech/reproduce-chexnet")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the labelled corpus of every source given (data/real_labels) into DIR instead",
    )
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "real_cxr"
    )
    args = parser.parse_args(argv)
    if args.corpus is not None:
        mirrors = {key: path for key, path in (("nih", args.nih), ("hannover", args.hannover)) if path}
        print(json.dumps(build_corpus(mirrors, args.corpus)))
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    entries = import_hannover(args.hannover, args.output)
    manifest = {
        "description": "Real chest radiographs: backgrounds for composite training (split train/"
        "validation) and held-out evaluation images; splits are by patient.",
        "sources": [HANNOVER],
        "images": entries,
    }
    (args.output / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["split"]] = counts.get(entry["split"], 0) + 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
