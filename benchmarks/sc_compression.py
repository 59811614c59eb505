"""Size, encode time and fidelity of the heatmap SC per transfer syntax, on a full-size DX.

    .venv/bin/python benchmarks/sc_compression.py [--rows 2500] [--columns 2000] [--seed 0]
        [--repeats 3] [--json OUT]

Renders one synthetic DX phantom of ``--rows`` x ``--columns`` (objects, a soft
probability map and a saliency map made from its true mask, no model), builds
the SC with every ``ScCompression`` and reports for each: file size, the
ratio to the uncompressed file of the same run, median build time (render +
encode) and its ratio to the uncompressed build, the median CPU seconds of the
build (all threads: on a busy machine the wall time says little, the CPU time
still compares the encoders), and how far the decoded
pixels are from the rendered picture (max absolute difference and PSNR; a
lossless syntax must give 0 and infinity, else the script exits 1).  Then the JPEG 2000 encoder
alone on the same picture: ours (Pillow's OpenJPEG, ``encode_jpeg2000_lossless``) against the
pylibjpeg-openjpeg encoder that highdicom would call, with their sizes and whether each holds
the GIL (how fast another thread counts meanwhile, against that thread alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from pydicom import dcmread
from xiqa import __version__
from xiqa.dicom_fixtures.instances import VARIANTS_BY_NAME, PatientStudy, build_instance, fixture_uid
from xiqa.dicom_fixtures.phantom import render_phantom
from xiqa.operators.loader import load_source_image
from xiqa.operators.preprocess import resize_image
from xiqa.operators.sc_writer import (
    ScCompression,
    build_heatmap_capture,
    encode_jpeg2000_lossless,
    render_heatmap,
)
from xiqa.operators.scoring import score_mask
from xiqa.operators.segmentation import mask_at_source
from xiqa.operators.writer_common import AlgorithmInfo

ALGORITHM = AlgorithmInfo("xiqa", __version__, "benchmark@0", ("saliency=gradcam",))


def source_and_maps(rows: int, columns: int, seed: int):
    rng = np.random.default_rng(seed)
    phantom = render_phantom(rng, rows, columns, object_kinds=["coin", "wire", "necklace", "button"])
    study = PatientStudy(patient_name="BENCH^SC", patient_id="BENCH1", birth_date="19700101", sex="F",
                         study_uid=fixture_uid("sc-benchmark", seed), study_date="20260101",
                         study_time="101500", accession_number="BENCH1", study_id="1")
    ds = build_instance(phantom.image, VARIANTS_BY_NAME["dx_processing_m2_12bit_explicit_none"], study,
                        series_number=1, instance_number=1, uid_seed=("sc-benchmark", seed))
    folder = Path(tempfile.mkdtemp(prefix="xiqa-sc-bench-"))
    ds.save_as(folder / "source.dcm", enforce_file_format=True)
    source = load_source_image(folder / "source.dcm")
    coverage = resize_image(phantom.mask.astype(np.float32), 256, 256)
    probability = np.clip(cv2.GaussianBlur(coverage, (5, 5), 1.0) * 1.6, 0, 0.98).astype(np.float32)
    saliency = cv2.GaussianBlur(probability, (0, 0), 6.0)
    saliency = ((saliency - saliency.min()) / max(float(np.ptp(saliency)), 1e-6)).astype(np.float32)
    quality = score_mask((probability > 0.5).astype(np.uint8), saliency)
    return source, probability, saliency, quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="builds per syntax (median time)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    source, probability, saliency, quality = source_and_maps(args.rows, args.columns, args.seed)
    mask = mask_at_source(probability, source.shape)
    picture = render_heatmap(source.pixels, saliency, mask, quality, ALGORITHM)
    print(f"source {args.rows} x {args.columns}, {len(quality.objects)} objects; "
          f"RGB picture {picture.nbytes / 1e6:.1f} MB")
    results, failed = [], False
    for compression in ScCompression:
        seconds, cpu_seconds = [], []
        for _ in range(args.repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            sc = build_heatmap_capture(source, saliency, mask, quality, ALGORITHM,
                                       compression=compression)
            buffer = BytesIO()
            sc.save_as(buffer, enforce_file_format=True)
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
        decoded = dcmread(BytesIO(buffer.getvalue()))
        pixels = decoded.pixel_array  # pydicom 3 returns RGB whatever the stored colour space
        difference = np.abs(pixels.astype(np.int16) - picture.astype(np.int16))
        mse = float(np.mean(difference.astype(np.float64) ** 2))
        psnr = math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)
        if not compression.lossy and difference.max() != 0:
            failed = True
        results.append({"compression": compression.value,
                        "transfer_syntax": str(compression.transfer_syntax),
                        "bytes": len(buffer.getvalue()),
                        "build_seconds": round(statistics.median(seconds), 3),
                        "build_cpu_seconds": round(statistics.median(cpu_seconds), 3),
                        "max_abs_difference": int(difference.max()),
                        "psnr_db": None if math.isinf(psnr) else round(psnr, 1),
                        "lossy_image_compression": str(decoded.LossyImageCompression)})
    reference = results[0]
    for row in results:
        row["size_ratio"] = round(row["bytes"] / reference["bytes"], 4)
        row["time_ratio"] = round(row["build_seconds"] / reference["build_seconds"], 2)
        psnr = "lossless" if row["psnr_db"] is None else f"PSNR {row['psnr_db']} dB"
        print(f"{row['compression']:>9}: {row['bytes'] / 1e6:7.2f} MB ({row['size_ratio']:.3f} of "
              f"uncompressed), build {row['build_seconds']:.2f} s ({row['time_ratio']:.2f}x), "
              f"cpu {row['build_cpu_seconds']:.2f} s, "
              f"max diff {row['max_abs_difference']}, {psnr}, Lossy {row['lossy_image_compression']}")
    encoders = compare_jpeg2000_encoders(picture, args.repeats)
    if args.json:
        args.json.write_text(json.dumps({"syntaxes": results, "jpeg2000_encoders": encoders}, indent=1))
    return 1 if failed else 0


def _counting_rate(seconds: float | None = None, work=None) -> float:
    """Counts per second of a Python loop in a second thread, while ``work()`` runs (or for ``seconds``)."""
    stop, counted = threading.Event(), []

    def count() -> None:
        total = 0
        while not stop.is_set():
            total += 1
        counted.append(total)

    counter = threading.Thread(target=count)
    started = time.perf_counter()
    counter.start()
    work() if work is not None else time.sleep(seconds)
    stop.set()
    counter.join()
    return counted[0] / (time.perf_counter() - started)


def compare_jpeg2000_encoders(picture: np.ndarray, repeats: int) -> list[dict]:
    from openjpeg import encode as pylibjpeg_encode  # what highdicom's JPEG 2000 path calls

    candidates = {"pillow (ours)": lambda: encode_jpeg2000_lossless(picture),
                  "pylibjpeg-openjpeg": lambda: pylibjpeg_encode(picture, photometric_interpretation=1,
                                                                 use_mct=True)}
    alone = _counting_rate(seconds=0.5)
    rows = []
    for name, encode in candidates.items():
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            size = len(encode())
            seconds.append(time.perf_counter() - started)
        threads = os.environ["OPJ_NUM_THREADS"]
        os.environ["OPJ_NUM_THREADS"] = "1"  # so that a core is free: what is left to measure is the GIL
        try:
            share = _counting_rate(work=encode) / alone
        finally:
            os.environ["OPJ_NUM_THREADS"] = threads
        rows.append({"encoder": name, "seconds": round(statistics.median(seconds), 3), "bytes": size,
                     "other_thread_share": round(share, 3)})
    reference = rows[1]["seconds"]
    print(f"JPEG 2000 encoder alone ({os.environ.get('OPJ_NUM_THREADS')} OpenJPEG threads, "
          f"{os.cpu_count()} cores):")
    for row in rows:
        print(f"  {row['encoder']:>18}: {row['seconds']:.3f} s ({reference / row['seconds']:.2f}x the speed "
              f"of pylibjpeg-openjpeg), {row['bytes'] / 1e6:.2f} MB; with one OpenJPEG thread, a Python "
              f"thread meanwhile runs at {row['other_thread_share']:.0%} of its speed alone")
    return rows


if __name__ == "__main__":
    sys.exit(main())
