"""Object-CXR annotations: the CSV parser, shape drawing and the Object-CXR data source."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from xiqa.training.datasets import LoadSampled, find_objectcxr_files, list_objectcxr
from xiqa.training.objectcxr import (
    ELLIPSE,
    POLYGON,
    RECTANGLE,
    ObjectShape,
    draw_objects,
    parse_annotation,
    parse_object,
    read_annotations,
)

# Line numbers matter: the header is line 1.
HAND_WRITTEN_CSV = """\
image_name,annotation
rect.jpg,0 2 3 5 6
ellipse.jpg,1 10 20 30 30
polygon.jpg,2 0 0 10 0 10 10
several.jpg, 0 1 1 2 2 ;1 5 5 9 9;2 20 20 25 20 22 24;
empty.jpg,
unknown_type.jpg,3 1 2 3 4
short_rect.jpg,0 1 2 3
text.jpg,0 a 2 3 4
two_point_polygon.jpg,2 1 1 5 5
odd_polygon.jpg,2 1 1 5 5 9 9 4
three_columns.jpg,0 1 1 2 2,extra
rect.jpg,0 9 9 10 10

,0 1 1 2 2
swapped.jpg,0 5 6 2 3
"quoted.jpg","1 4 4 8 10"
"""


@pytest.fixture
def hand_written_csv(tmp_path: Path) -> Path:
    path = tmp_path / "annotations.csv"
    path.write_text(HAND_WRITTEN_CSV)
    return path


def test_parser_reads_every_shape_and_empty_rows(hand_written_csv: Path) -> None:
    table = read_annotations(hand_written_csv)
    by_name = {image.image_name: image for image in table.images}
    assert list(by_name) == ["rect.jpg", "ellipse.jpg", "polygon.jpg", "several.jpg", "empty.jpg",
                             "swapped.jpg", "quoted.jpg"]
    assert by_name["rect.jpg"].objects == (ObjectShape(RECTANGLE, (2, 3, 5, 6)),)
    assert by_name["rect.jpg"].line == 2
    assert by_name["ellipse.jpg"].objects == (ObjectShape(ELLIPSE, (10, 20, 30, 30)),)
    assert by_name["polygon.jpg"].objects == (ObjectShape(POLYGON, (0, 0, 10, 0, 10, 10)),)
    # surrounding spaces and a trailing ";" are tolerated
    assert [o.shape_type for o in by_name["several.jpg"].objects] == [RECTANGLE, ELLIPSE, POLYGON]
    assert by_name["empty.jpg"].objects == () and not by_name["empty.jpg"].has_object
    # corners given in the other order mean the same box
    assert by_name["swapped.jpg"].objects == (ObjectShape(RECTANGLE, (2, 3, 5, 6)),)
    assert by_name["quoted.jpg"].objects == (ObjectShape(ELLIPSE, (4, 4, 8, 10)),)


def test_parser_reports_malformed_rows_with_line_numbers(hand_written_csv: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    table = read_annotations(hand_written_csv)
    problems = {problem.line: problem.reason for problem in table.problems}
    assert sorted(problems) == [7, 8, 9, 10, 11, 12, 13, 15]
    assert "object type 3" in problems[7]
    assert "rectangle needs 4 coordinates" in problems[8]
    assert "non-numeric" in problems[9]
    assert "polygon needs an even number of at least 6" in problems[10]
    assert "polygon needs an even number of at least 6" in problems[11]
    assert "expected 2 columns" in problems[12]
    assert "duplicate image_name (first on line 2)" in problems[13]
    assert "empty image_name" in problems[15]
    assert str(table.problems[0]).startswith("line 7: ")
    # each skipped row is logged once, naming the file and the line
    logged = [r.getMessage() for r in caplog.records if "row skipped" in r.getMessage()]
    assert len(logged) == 8 and logged[0].startswith("annotations.csv line 7:")


def test_parser_without_header_reads_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "no_header.csv"
    path.write_text("a.jpg,0 1 1 3 3\nb.jpg,\n")
    table = read_annotations(path)
    assert [(i.image_name, i.line) for i in table.images] == [("a.jpg", 1), ("b.jpg", 2)]


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty object"),
    ("x 1 2 3 4", "not an integer"),
    ("1 1 2 3 nan", "non-finite"),
    ("1 1 2 3 4 5", "ellipse needs 4 coordinates"),
])
def test_parse_object_rejects_with_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_object(text)


def test_parse_annotation_accepts_decimals_and_blank() -> None:
    assert parse_annotation("  ") == ()
    assert parse_annotation("0 1.5 2 3 4.25") == (ObjectShape(RECTANGLE, (1.5, 2, 3, 4.25)),)


def test_rectangle_mask_includes_both_corners() -> None:
    mask = draw_objects([ObjectShape(RECTANGLE, (2, 3, 5, 6))], 10, 12)
    expected = np.zeros((10, 12), np.uint8)
    expected[3:7, 2:6] = 1  # rows y1..y2, columns x1..x2, inclusive: 4 x 4 pixels
    np.testing.assert_array_equal(mask, expected)


def test_ellipse_mask_fills_the_inscribed_ellipse() -> None:
    mask = draw_objects([ObjectShape(ELLIPSE, (10, 20, 50, 40))], 64, 64)
    rows, columns = np.nonzero(mask)
    assert (columns.min(), columns.max(), rows.min(), rows.max()) == (10, 50, 20, 40)
    assert mask[30, 30] == 1 and mask[20, 10] == 0  # centre in, box corner out
    assert mask.sum() == pytest.approx(math.pi * 20 * 10, rel=0.1)


def test_polygon_mask_fills_the_triangle_and_clips_to_the_image() -> None:
    mask = draw_objects([ObjectShape(POLYGON, (0, 0, 10, 0, 10, 10))], 20, 20)
    assert mask[1, 8] == 1 and mask[8, 1] == 0
    assert mask.sum() == pytest.approx(0.5 * 11 * 11 + 5.5, abs=6)
    clipped = draw_objects([ObjectShape(RECTANGLE, (-5, -5, 2, 2)),
                            ObjectShape(POLYGON, (15, 15, 40, 15, 40, 40))], 20, 20)
    assert clipped[:3, :3].all() and clipped[0, 3] == 0 and clipped[19, 19] == 1


def test_objectcxr_source_lists_images_and_reports_missing_files(tmp_path: Path) -> None:
    images = tmp_path / "train"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(images / name), np.full((80, 120), 100, np.uint8))
    (tmp_path / "train.csv").write_text("image_name,annotation\na.jpg,0 10 20 29 39\n"
                                        "b.jpg,\nmissing.jpg,1 1 1 5 5\nbad.jpg,7 1 1 2 2\n")
    assert find_objectcxr_files(tmp_path) == (tmp_path / "train.csv", images)
    listing = list_objectcxr(tmp_path / "train.csv")
    assert [item["id"] for item in listing.items] == ["a.jpg", "b.jpg"]
    assert len(listing.problems) == 2
    assert "line 4: image missing.jpg not found" in listing.problems[1]
    assert "line 5" in listing.problems[0]

    sample = LoadSampled(size=64)(listing.items[0])
    assert sample["image"].shape == (1, 64, 64) and sample["label"].shape == (1, 64, 64)
    assert sample["image"].max() == pytest.approx(100 / 255, abs=0.02)
    # a 20 x 20 box of a 120 x 80 image is about 10.7 x 16 pixels on the 64 grid
    assert sample["label"].sum() == pytest.approx(20 / 120 * 64 * 20 / 80 * 64, rel=0.2)
    assert LoadSampled(size=64)(listing.items[1])["label"].sum() == 0


def test_fixture_annotations_parse_and_cover_the_exact_masks(fixture_dir: Path) -> None:
    """``xiqa fixtures`` writes Object-CXR CSVs: every row parses and outlines its objects."""
    csv_path, _ = find_objectcxr_files(fixture_dir)
    table = read_annotations(csv_path)
    assert table.problems == [] and table.images
    inside = total = 0
    for image in table.images:
        exact = cv2.imread(str(fixture_dir / "masks" / image.image_name.replace(".jpg", ".png")),
                           cv2.IMREAD_GRAYSCALE) > 0
        drawn = draw_objects(image.objects, *exact.shape).astype(bool)
        assert image.has_object == bool(exact.any())
        if exact.any():
            # Outlines are an annotator's, not the exact mask (the fixtures' ECG-electrode hull
            # can cut off part of the pad), but they must lie on the objects.
            assert (exact & drawn).sum() / exact.sum() > 0.5
        inside, total = inside + int((exact & drawn).sum()), total + int(exact.sum())
    assert inside / total > 0.85
