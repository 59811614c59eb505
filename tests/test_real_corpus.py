"""The labelled real-radiograph corpus: label files, patient splits, and real devices cut from a
plate and pasted onto another (training/corpus.py, training/real_objects.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from xiqa.training.corpus import (
    CATEGORIES,
    LABELS,
    SOURCES,
    CorpusImage,
    LabelledObject,
    read_labels,
    training_sources_split,
)
from xiqa.training.real_objects import extract_real_objects, object_mask, paste_real_object


def _plate_with_line(offset: int = 0) -> tuple[np.ndarray, np.ndarray, LabelledObject]:
    """A smooth plate with a thin bright lead; the label is drawn ``offset`` pixels beside it."""
    rows, columns = np.mgrid[0:200, 0:200].astype(np.float32)
    plate = 0.25 + 0.3 * (rows / 200) + 0.05 * np.sin(columns / 23)
    truth = np.zeros((200, 200), np.uint8)
    cv2.line(truth, (30, 40), (170, 150), 1, thickness=2)
    plate = np.where(truth > 0, plate + 0.25, plate).astype(np.float32)
    label = LabelledObject(
        "ecg_lead_wire", "polyline", ((30.0 + offset, 40.0), (170.0 + offset, 150.0)), True
    )
    return plate, truth > 0, label


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_label_files_use_the_fixed_categories_and_shapes(source):
    records = read_labels(source)
    assert len(records) >= 100
    for name, record in records.items():
        assert record["view"] in {"frontal", "lateral", "other"}, name
        for item in record["objects"]:
            assert item["category"] in CATEGORIES, (name, item["category"])
            assert item["shape"] in {"box", "polyline"}, name
            assert len(item["points"]) >= 2, name
            assert all(x >= -5 and y >= -5 for x, y in item["points"]), name


def test_labels_record_devices_on_both_sources_and_provenance_is_documented():
    for source in SOURCES:
        with_objects = [r for r in read_labels(source).values() if r["objects"]]
        assert len(with_objects) >= 40, source
    readme = (LABELS / "README.md").read_text()
    for source in SOURCES.values():
        assert source.repository in readme and source.commit in readme


def test_object_mask_finds_the_lead_next_to_a_label_drawn_beside_it():
    plate, truth, label = _plate_with_line(offset=4)
    mask, _ = object_mask(plate, label)
    assert (mask & truth).sum() >= 0.8 * truth.sum()
    # nothing far from the lead: the smooth plate around it is not the object
    far = cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert not (mask & far).any()


def test_a_pasted_real_lead_keeps_its_contrast_and_its_mask_is_where_it_brightened():
    plate, truth, label = _plate_with_line()
    image = CorpusImage("test_1", "test_1.png", "test", "g", "frontal", "AP", True, (), (label,))
    (real,) = extract_real_objects(image, plate)
    assert real.category == "ecg_lead_wire" and real.mask.sum() >= 0.8 * truth.sum()
    target = np.full((200, 200), 0.4, np.float32)
    placed = paste_real_object(np.random.default_rng(0), target, real, source_side=200, density=1.0)
    assert placed.sum() > 0.6 * truth.sum()
    assert target[placed].mean() > 0.5  # about the 0.25 it stood out by on a 0.4 background
    assert np.allclose(
        target[~cv2.dilate(placed.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)], 0.4
    )


def test_training_split_keeps_patients_apart_and_other_sources_out():
    def image(index: int, source: str, patient: int) -> CorpusImage:
        return CorpusImage(
            f"{source}_{index}", "", source, f"{source}_p{patient}", "frontal", "PA", False, ()
        )

    images = [image(i, "nih", i // 2) for i in range(200)] + [image(i, "hannover", i) for i in range(50)]
    train, validation = training_sources_split(images, {"nih"})
    assert {i.source for i in train + validation} == {"nih"}
    assert not {i.group for i in train} & {i.group for i in validation}
    assert 5 <= len(validation) <= 50 and len(train) + len(validation) == 200


def test_label_file_lines_are_one_json_object_each():
    for source in SOURCES:
        for line in (LABELS / f"{source}.jsonl").read_text().splitlines():
            assert isinstance(json.loads(line), dict)


def test_composites_with_a_real_device_library_mask_exactly_what_was_pasted():
    from xiqa.training.composite import CompositeConfig, make_composite

    plate, _, label = _plate_with_line()
    image = CorpusImage("test_1", "test_1.png", "test", "g", "frontal", "AP", True, (), (label,))
    library = extract_real_objects(image, plate)
    background = np.full((300, 300), 0.35, np.float32)
    always = CompositeConfig(
        real_object_probability=1.0, marker_probability=0, text_probability=0, collimation_probability=0
    )
    composite = make_composite(np.random.default_rng(4), background, always, kinds=[], real_objects=library)
    kinds = [inserted.kind for inserted in composite.objects]
    assert kinds and set(kinds) == {"real_ecg_lead_wire"}
    assert composite.mask.sum() == pytest.approx(sum(o.pixels for o in composite.objects), rel=0.5)


def test_lineage_lists_the_initial_bundle_then_its_ancestors(tmp_path):
    from xiqa.training.default_model import lineage_of

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    grandparent = {"command": "first run", "epochs": 12}
    training = {"command": "second run", "epochs": 6, "history": [{"dice": 0.5}], "lineage": [grandparent]}
    (tmp_path / "configs" / "metadata.json").write_text(
        json.dumps({"name": "xiqa_cxr_seg", "version": "0.2.0", "xiqa": {"training": training}})
    )
    lineage = lineage_of(tmp_path / "models" / "model.pt")
    assert [entry["command"] for entry in lineage] == ["second run", "first run"]
    assert "history" not in lineage[0] and lineage[0]["name"] == "xiqa_cxr_seg"
    assert lineage_of(None) == []


def test_plate_mask_puts_each_cut_object_back_where_it_lay():
    from xiqa.training.real_objects import plate_mask

    plate, truth, label = _plate_with_line()
    image = CorpusImage("test_1", "test_1.png", "test", "g", "frontal", "AP", True, (), (label,))
    found = extract_real_objects(image, plate)
    mask = plate_mask(found, plate.shape)
    assert mask.sum() == sum(int(real.mask.sum()) for real in found)
    assert (mask & truth).sum() >= 0.8 * truth.sum()
    assert not (mask & (cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0)).any()


def test_a_real_plate_sample_moves_its_label_with_the_plate():
    from xiqa.training.composite import CompositeConfig, plate_as_is_sample, real_plate_sample

    plate, truth, _ = _plate_with_line()
    plain = CompositeConfig(marker_probability=0, collimation_probability=0, washed_out_probability=0)
    for seed in range(4):
        sample = real_plate_sample(np.random.default_rng(seed), plate, truth, plain)
        image, label = sample["image"][0], sample["label"][0] > 0
        assert sample["image"].shape == (3, 256, 256) and label.sum() > 60
        # the lead is brighter than its surroundings wherever the label says it is, after the crop,
        # flip, rotation and processing that moved both
        around = cv2.dilate(label.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~label
        assert image[label].mean() > image[around].mean() + 0.05, seed
    as_is = plate_as_is_sample(plate, truth)
    assert as_is["kinds"] == ["real_plate"] and as_is["label"][0].sum() > 60
    assert plate_as_is_sample(plate, np.zeros_like(truth))["kinds"] == []
