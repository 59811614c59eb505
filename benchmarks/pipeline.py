"""Per-stage timings of the whole graph on large CR plates, and the framework's overhead.

    .venv/bin/python benchmarks/pipeline.py [--images 3] [--size 2000] [--saliency gradcam]
        [--sc-compression jpeg-ls]

Writes N synthetic 15-bit MONOCHROME1 CR plates (size x size, uncompressed, like
a real CR chest plate), then in one process:

1. runs the graph's operator objects' steps in a plain Python loop (no Holoscan
   scheduler), as the reference, in a thread of its own, and
2. runs them through the MONAI Deploy Application (``run_graph``, what
   ``xiqa analyze`` runs),

and prints per-stage medians, per-image totals and the ratio graph / direct.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _write_plates(folder: Path, count: int, size: int, study_number: int = 0) -> list[Path]:
    """``count`` plates of one study (``study_number`` gives it its own UIDs and pixels)."""
    from pydicom.uid import ExplicitVRLittleEndian
    from xiqa.dicom_fixtures.instances import CR_IMAGE_STORAGE, InstanceVariant, PatientStudy, build_instance
    from xiqa.dicom_fixtures.phantom import render_phantom

    plate = InstanceVariant("cr_m1_15bit_plate", "CR", CR_IMAGE_STORAGE, "MONOCHROME1", 15,
                            ExplicitVRLittleEndian, "window")
    study = PatientStudy("BENCH^PLATE", "BENCH1", "19700101", "O",
                         f"1.2.826.0.1.3680043.10.1432.77{f'.{study_number}' if study_number else ''}",
                         "20260101", "120000", f"B{study_number + 1}", str(study_number + 1))
    paths = []
    for index in range(count):
        phantom = render_phantom(np.random.default_rng(100 + 1000 * study_number + index), size, size)
        path = folder / f"plate_{study_number}_{index}.dcm"
        build_instance(phantom.image, plate, study, 1, index + 1, ("bench", study_number, index)).save_as(
            path, enforce_file_format=True)
        paths.append(path)
    return paths


def _direct(app, paths: list[Path]) -> tuple[list, float]:
    """The composed app's own operators, stepped in order without the scheduler."""
    from xiqa.operators.case import CaseOperator, run_step
    from xiqa.operators.loader import load_case

    app.compose()
    nodes = [node for node in app.graph.get_nodes() if isinstance(node, CaseOperator)]
    started = time.perf_counter()
    cases = []
    for path in paths:
        case = load_case(path, app.settings.loader)
        for node in nodes:
            run_step(case, node.stage, node.step)
        cases.append(case)
    return cases, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--saliency", default="gradcam", choices=("gradcam", "normgrad0", "normgrad1"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sc-compression", default=None,
                        help="the heatmap SC's transfer syntax (default: the node's, JPEG-LS); "
                             "jpeg2000 gives the graph as it was before JPEG-LS")
    args = parser.parse_args(argv)

    import torch
    from xiqa.app import XiqaApp, build_settings, run_graph
    from xiqa.operators.sc_writer import DEFAULT_COMPRESSION, ScCompression

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = _write_plates(folder, args.images, args.size)
        started = time.perf_counter()
        settings = build_settings(paths, folder / "graph", model=args.model, device=args.device,
                                  saliency=args.saliency)
        load_seconds = time.perf_counter() - started
        settings.sc_compression = ScCompression(args.sc_compression or DEFAULT_COMPRESSION)
        direct_settings = build_settings(paths, folder / "direct", model=settings.model,
                                         summarizer=settings.summarizer, device=args.device,
                                         saliency=args.saliency)
        direct_settings.sc_compression = settings.sc_compression
        direct_app = XiqaApp(direct_settings)
        # the reference first, in a thread of its own that ends before the graph starts: torch's
        # OpenMP team ends with it, and a second team alive on 2 cores would slow whichever runs
        # later (see segmentation.one_torch_thread)
        direct: list = []
        reference = threading.Thread(target=lambda: direct.extend(_direct(direct_app, paths)))
        reference.start()
        reference.join()
        direct_cases, direct_seconds = direct
        started = time.perf_counter()
        graph_cases = run_graph(settings)
        graph_seconds = time.perf_counter() - started

    failed = [case.error for case in graph_cases + direct_cases if not case.ok]
    if failed:
        raise SystemExit(f"cases failed: {failed}")
    stages = list(graph_cases[0].timings)
    print(f"xiqa pipeline benchmark: {args.images} x {args.size}x{args.size} 15-bit MONOCHROME1 CR, "
          f"saliency {args.saliency}, SC {settings.sc_compression.value}, device {settings.model.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"model + summarizer set-up (once): {load_seconds:.2f} s   model {settings.model.model_id}")
    print(f"{'stage':<16}{'graph median s':>16}{'direct median s':>17}")
    for stage in stages:
        graph = statistics.median(case.timings[stage] for case in graph_cases)
        direct = statistics.median(case.timings.get(stage, float("nan")) for case in direct_cases)
        print(f"{stage:<16}{graph:>16.3f}{direct:>17.3f}")
    graph_per_image, direct_per_image = graph_seconds / args.images, direct_seconds / args.images
    print(f"{'per image, wall':<16}{graph_per_image:>16.3f}{direct_per_image:>17.3f}")
    print(f"graph / direct per image: {graph_per_image / direct_per_image:.3f} "
          f"(graph wall includes Holoscan start-up and teardown, once per run)")
    for case in graph_cases:
        print(f"  {case.path.name}: Q_img {case.quality.q_img:.3f} verdict {case.quality.verdict.value} "
              f"objects {len(case.quality.objects)} summary {case.summary.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
