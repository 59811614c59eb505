"""K-fold training with MONAI engines: splits, data sources, a tiny real run, resume, CLI errors.

The runs are real but tiny (24 phantoms of about 128 px, a 64 px network grid,
MobileNetV2, 2 folds x 2 epochs, one CPU thread) so that the module stays
well under a minute on two shared cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from xiqa.dicom_fixtures.generate import write_fixture_set
from xiqa.operators.preprocess import resize_mask
from xiqa.operators.segmentation import load_segmentation_model, segment
from xiqa.training import handlers
from xiqa.training.cli import EXIT_OK, EXIT_USAGE, build_parser, main
from xiqa.training.datasets import (
    LoadSampled,
    list_dicom,
    list_rendered,
    list_synthetic,
    prepare_samples,
    training_transforms,
)
from xiqa.training.splits import make_folds, stratified_folds, stratified_holdout

TINY = ["--format", "synthetic", "--folds", "2", "--epochs", "2", "--encoder", "mobilenet_v2",
        "--image-size", "64", "--batch-size", "8", "--learning-rate", "1e-3", "--threads", "1",
        "--no-progress", "--no-explanations", "-q"]
# The module's reference run also shows a progress bar and scores Grad-CAM on 2 images per fold.
FINISHED = [arg for arg in TINY if arg not in ("--no-progress", "--no-explanations")] + \
    ["--explanation-methods", "gradcam", "--explanation-images", "2"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    write_fixture_set(folder, count=24, seed=11, size_range=(96, 160))
    return folder


@pytest.fixture(scope="module")
def finished_run(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("run") / "out"
    assert main(["--data", str(phantoms), "--output", str(output), *FINISHED]) == EXIT_OK
    return output


# --------------------------------------------------------------------------- splits

def test_folds_are_disjoint_cover_every_image_and_are_stratified() -> None:
    has_object = [i % 3 != 0 for i in range(50)]  # 33 with objects, 17 without
    folds = make_folds(has_object, folds=5, seed=42, validation_fraction=0.1)
    tests = [set(f.test) for f in folds]
    assert sorted(i for t in tests for i in t) == list(range(50))  # each image in one test fold
    for fold in folds:
        assert not set(fold.test) & (set(fold.train) | set(fold.validation))
        assert not set(fold.train) & set(fold.validation)
        assert sorted(fold.train + fold.validation + fold.test) == list(range(50))
        assert len(fold.validation) == 4
    positives = [sum(has_object[i] for i in t) for t in tests]
    assert max(positives) - min(positives) <= 1 and max(map(len, tests)) - min(map(len, tests)) <= 1


def test_folds_are_deterministic_for_a_seed() -> None:
    has_object = [i % 2 == 0 for i in range(30)]
    assert make_folds(has_object, 5, 42) == make_folds(has_object, 5, 42)
    assert stratified_folds(has_object, 5, 42) != stratified_folds(has_object, 5, 43)


def test_split_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match='"folds" must be at least 2'):
        stratified_folds([True] * 4, 1, 0)
    with pytest.raises(ValueError, match="exceeds the number of images"):
        stratified_folds([True] * 4, 5, 0)
    with pytest.raises(ValueError, match='"fraction"'):
        stratified_holdout([0, 1], [True, False], 1.0, 0)
    assert stratified_holdout([0, 1, 2], [True, True, False], 0.0, 0) == ([0, 1, 2], [])


def test_epoch_sampler_order_depends_only_on_seed_and_epoch() -> None:
    sampler = handlers.EpochSampler(10, seed=5)
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != first
    sampler.set_epoch(3)
    assert list(sampler) == first and sorted(first) == list(range(10))


# --------------------------------------------------------------------------- sources

def test_synthetic_source_matches_the_exact_masks(phantoms: Path) -> None:
    listing = list_synthetic(phantoms)
    assert len(listing.items) == 24 and listing.problems == []
    jpeg = list_synthetic(phantoms, images="jpeg")
    dicom_sample = LoadSampled(64)(listing.items[0])
    jpeg_sample = LoadSampled(64)(jpeg.items[0])
    np.testing.assert_array_equal(dicom_sample["label"], jpeg_sample["label"])
    assert np.abs(dicom_sample["image"] - jpeg_sample["image"]).mean() < 0.02
    assert dicom_sample["image"].shape == (1, 64, 64) and dicom_sample["label"].dtype == np.uint8


def test_rendered_source_is_reproducible() -> None:
    items = list_rendered(3, seed=9, sizes=(96, 128)).items
    first, _ = prepare_samples(items, size=64)
    again, _ = prepare_samples(items, size=64)
    assert [s["id"] for s in first] == ["render_9_00000", "render_9_00001", "render_9_00002"]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_unreadable_images_are_reported_and_threads_keep_the_order(phantoms: Path,
                                                                   tmp_path: Path) -> None:
    items = list_synthetic(phantoms, images="jpeg").items[:4]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    items.insert(1, {**items[0], "id": "broken.jpg", "image": str(tmp_path / "broken.jpg")})
    serial, serial_problems = prepare_samples(items, size=32)
    threaded, threaded_problems = prepare_samples(items, size=32, workers=2)
    assert serial_problems == threaded_problems == [
        "broken.jpg: cannot load (ValueError: cannot decode image broken.jpg); skipped"]
    assert [s["id"] for s in serial] == [s["id"] for s in threaded] == \
        [item["id"] for item in items if item["id"] != "broken.jpg"]
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_dicom_source_reads_seg_ground_truth(fixture_dir: Path, tmp_path: Path) -> None:
    """Radiographs + SEGs written by the app's own SEG writer give back the exact masks."""
    from xiqa.operators.loader import load_source_image
    from xiqa.operators.seg_writer import build_segmentation
    from xiqa.operators.writer_common import AlgorithmInfo, save_atomically

    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    algorithm = AlgorithmInfo(name="annotator", version="1", model_id="manual")
    for index, entry in enumerate(manifest[:3]):
        source = load_source_image(fixture_dir / entry["dicom"])
        (tmp_path / f"img{index}.dcm").write_bytes((fixture_dir / entry["dicom"]).read_bytes())
        if index < 2:  # the third radiograph has no SEG
            mask = cv2.imread(str(fixture_dir / entry["mask"]), cv2.IMREAD_GRAYSCALE) > 0
            seg = build_segmentation(source, mask, algorithm)
            save_atomically(seg, tmp_path / f"seg{index}.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")

    listing = list_dicom(tmp_path)
    assert len(listing.items) == 2
    assert any("no SEG references it" in p for p in listing.problems)
    assert any(p.startswith("notes.txt: not a readable DICOM") for p in listing.problems)
    by_uid = {entry["sop_instance_uid"]: entry for entry in manifest}
    for item in listing.items:
        exact = cv2.imread(str(fixture_dir / by_uid[item["id"]]["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(LoadSampled(64)(item)["label"][0], resize_mask(exact, 64, 64))
    assert len(list_dicom(tmp_path, missing_seg="empty").items) == 3


def test_training_transforms_keep_labels_binary_and_images_in_range() -> None:
    rng = np.random.default_rng(0)
    sample = {"image": rng.random((1, 32, 32), dtype=np.float32),
              "label": (rng.random((1, 32, 32)) > 0.8).astype(np.uint8)}
    transform = training_transforms(channels=3, size=32)
    transform.set_random_state(seed=1)
    for _ in range(5):
        out = transform(dict(sample))
        assert out["image"].shape == (3, 32, 32) and out["label"].shape == (1, 32, 32)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0


# --------------------------------------------------------------------------- a tiny real run

def test_tiny_run_writes_loadable_bundles_and_held_out_metrics(finished_run: Path) -> None:
    bundles = finished_run / "bundles"
    assert sorted(p.name for p in bundles.iterdir()) == ["fold_0", "fold_1"]
    splits = json.loads((finished_run / "splits.json").read_text())
    tests = [set(fold["test"]) for fold in splits]
    assert not tests[0] & tests[1] and len(tests[0] | tests[1]) == 24
    for fold in splits:
        assert not set(fold["test"]) & (set(fold["train"]) | set(fold["validation"]))

    for index, fold in enumerate(splits):
        metadata = json.loads((bundles / f"fold_{index}" / "configs" / "metadata.json").read_text())
        xiqa = metadata["xiqa"]
        held_out = xiqa["metrics"]["held_out"]
        assert xiqa["training"]["fold"] == index
        assert xiqa["training"]["test_images"] == len(fold["test"])
        assert held_out["images"] == len(fold["test"])  # evaluated on the held-out images only
        for name in ("dice", "recall", "boundary_iou", "pooled_dice"):
            assert held_out[name] is None or 0.0 <= held_out[name] <= 1.0
        for name in ("assd", "hd95"):
            assert held_out[name] is None or 0.0 <= held_out[name] <= 64 * 2 ** 0.5
        assert xiqa["training"]["command"].startswith("xiqa train --data")
        explanations = xiqa["metrics"]["explanations"]
        assert explanations["status"] == "ok" and explanations["images"] == 2
        gradcam = explanations["gradcam"]
        assert gradcam["pointing_hits"] + gradcam["pointing_misses"] == 2
        for name in ("pointing_game", "deletion_auc", "insertion_auc", "drop"):
            assert 0.0 <= gradcam[name] <= 1.0
        assert len(xiqa["training"]["history"]) == 2
        per_image = _read_csv(finished_run / "work" / f"fold_{index}" / "per_image.csv")
        assert sorted(row["id"] for row in per_image) == sorted(fold["test"])
        assert not (finished_run / "work" / f"fold_{index}" / "checkpoint.pt").exists()

    single = load_segmentation_model(bundles / "fold_0", device="cpu")
    ensemble = load_segmentation_model(bundles, device="cpu")
    assert len(single.networks) == 1 and len(ensemble.networks) == 2
    result = segment(ensemble, np.zeros((3, 256, 256), np.float32))  # the app's grid
    assert result.mask.shape == (256, 256) and 0 <= result.probability.min() <= 1

    summary = json.loads((finished_run / "cv_summary.json").read_text())
    assert summary["folds"] == 2 and [row["fold"] for row in summary["per_fold"]] == [0, 1]
    assert set(summary["summary"]["dice"]) == {"mean", "std", "n"}
    assert summary["summary"]["explanation.gradcam.insertion_auc"]["n"] == 2
    table = (finished_run / "cv_summary.md").read_text()
    assert "| Dice (per image) |" in table and "| Boundary IoU |" in table and "HD95" in table
    assert (finished_run / "cv_summary.png").read_bytes()[:4] == b"\x89PNG"


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    return torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)


class _Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(phantoms: Path, finished_run: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    original = handlers.FoldCheckpointer._complete_epoch

    def interrupt_in_fold_1(self, trainer) -> None:
        original(self, trainer)  # the checkpoint of this epoch is on disk ...
        if self.folder.name == "fold_1" and trainer.state.epoch == 1:
            raise _Interrupted  # ... and then the process "dies"

    monkeypatch.setattr(handlers.FoldCheckpointer, "_complete_epoch", interrupt_in_fold_1)
    with pytest.raises(_Interrupted):
        main(["--data", str(phantoms), "--output", str(output), *TINY])
    monkeypatch.undo()
    assert (output / "bundles" / "fold_0").is_dir()
    assert not (output / "bundles" / "fold_1").exists()
    assert (output / "work" / "fold_1" / "checkpoint.pt").is_file()
    fold_0_metadata_path = output / "bundles" / "fold_0" / "configs" / "metadata.json"
    fold_0_metadata = fold_0_metadata_path.read_bytes()

    assert main(["--data", str(phantoms), "--output", str(output), *TINY]) == EXIT_OK
    # fold 0 was kept as it was; fold 1 continued from epoch 1, bit for bit as if never stopped
    assert fold_0_metadata_path.read_bytes() == fold_0_metadata
    for fold in ("fold_0", "fold_1"):
        resumed = _weights(output / "bundles" / fold)
        reference = _weights(finished_run / "bundles" / fold)
        assert resumed.keys() == reference.keys()
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), fold
    history = _read_csv(output / "work" / "fold_1" / "history.csv")
    assert [row["epoch"] for row in history] == ["1", "2"]


def test_restart_with_other_settings_is_refused(phantoms: Path, finished_run: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    argv = ["--data", str(phantoms), "--output", str(finished_run), *FINISHED]
    argv[argv.index("--learning-rate") + 1] = "0.01"
    assert main(argv) == EXIT_USAGE
    assert "different settings (learning_rate)" in capsys.readouterr().err


@pytest.mark.slow
def test_early_stopping_ends_a_fold_and_is_recorded(phantoms: Path, tmp_path: Path) -> None:
    argv = ["--data", str(phantoms), "--output", str(tmp_path / "out"), *TINY]
    argv[argv.index("--epochs") + 1] = "4"
    argv += ["--patience", "1", "--validation-fraction", "0"]
    assert main(argv) == EXIT_OK
    for fold in ("fold_0", "fold_1"):
        training = json.loads((tmp_path / "out" / "bundles" / fold / "configs" / "metadata.json")
                              .read_text())["xiqa"]["training"]
        assert training["epochs_run"] == len(training["history"]) <= 4
        if training["epochs_run"] < 4:
            assert training["stopped_early"]
            assert training["epochs_run"] == training["best_epoch"] + 1


# --------------------------------------------------------------------------- CLI

def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--output", str(tmp_path / "out")]
    assert main(["--format", "objectcxr", *out]) == EXIT_USAGE
    assert main(["--format", "objectcxr", "--render", "5", *out]) == EXIT_USAGE
    assert main(["--format", "dicom", "--data", str(tmp_path / "nothing"), *out]) == EXIT_USAGE
    assert main(["--format", "synthetic", "--render", "4", "--image-size", "70", *out]) == \
        EXIT_USAGE
    assert main(["--format", "bogus", *out]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--data is required" in err and "does not exist" in err and "multiple of 16" in err


def test_parser_defaults_follow_the_method() -> None:
    args = build_parser().parse_args(["--format", "objectcxr", "--data", "x", "--output", "y"])
    assert (args.folds, args.epochs, args.batch_size, args.learning_rate, args.seed) == \
        (5, 50, 16, 1e-4, 42)
    assert (args.encoder, args.device, args.image_size) == ("resnet50", "auto", 256)
