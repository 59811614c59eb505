"""Object-CXR annotations: parse ``image_name,annotation`` CSV files and draw them as masks.

Format (the Object-CXR challenge, also written by ``xiqa fixtures``)::

    image_name,annotation
    00001.jpg,0 120 340 180 420;2 10 10 40 12 38 60
    00002.jpg,

Each object is ``type x1 y1 x2 y2 ...`` in source pixel coordinates, objects
are separated by ``;``.  Type 0 is a rectangle and type 1 an ellipse, both given
by their bounding box ``x1 y1 x2 y2``; type 2 is a polygon ``x1 y1 ... xn yn``
with at least three vertices.  An empty annotation means the image holds no
object.

Decoding is tolerant where the intent is clear (surrounding whitespace, a
trailing or doubled ``;``, corners given in either order, decimal
coordinates) and strict otherwise: a row that cannot be trusted is skipped
*whole* (a partly kept annotation would teach the network that a real object
is background) and reported as a :class:`ParseProblem` with its line number.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

RECTANGLE, ELLIPSE, POLYGON = 0, 1, 2
SHAPE_NAMES = {RECTANGLE: "rectangle", ELLIPSE: "ellipse", POLYGON: "polygon"}
HEADER = ("image_name", "annotation")


@dataclass(frozen=True)
class ObjectShape:
    """One annotated object: a shape type and its flat pixel coordinates (x, y pairs)."""

    shape_type: int
    points: tuple[float, ...]

    def to_objectcxr(self) -> str:
        return " ".join([str(self.shape_type), *(f"{v:g}" for v in self.points)])


@dataclass(frozen=True)
class AnnotatedImage:
    """One CSV row: the image file name and its objects (empty tuple: no object)."""

    image_name: str
    objects: tuple[ObjectShape, ...]
    line: int

    @property
    def has_object(self) -> bool:
        return bool(self.objects)


@dataclass(frozen=True)
class ParseProblem:
    """A skipped row: 1-based line number in the file (the header is line 1) and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class AnnotationTable:
    images: list[AnnotatedImage] = field(default_factory=list)
    problems: list[ParseProblem] = field(default_factory=list)


def parse_object(text: str) -> ObjectShape:
    """One ``type x1 y1 x2 y2 ...`` object.

    Raises
    ------
    ValueError
        Unknown type, non-numeric or non-finite values, or the wrong number of
        coordinates for the type; the message says which.
    """
    fields = text.split()
    if not fields:
        raise ValueError("empty object")
    try:
        shape_type = int(fields[0])
    except ValueError:
        raise ValueError(f"object type {fields[0][:20]!r} is not an integer") from None
    if shape_type not in SHAPE_NAMES:
        raise ValueError(f"object type {shape_type} is not 0 (rectangle), 1 (ellipse) "
                         "or 2 (polygon)")
    try:
        points = tuple(float(v) for v in fields[1:])
    except ValueError:
        raise ValueError(f"{SHAPE_NAMES[shape_type]} has a non-numeric coordinate") from None
    if not all(np.isfinite(points)):
        raise ValueError(f"{SHAPE_NAMES[shape_type]} has a non-finite coordinate")
    name = SHAPE_NAMES[shape_type]
    if shape_type in (RECTANGLE, ELLIPSE):
        if len(points) != 4:
            raise ValueError(f"{name} needs 4 coordinates (x1 y1 x2 y2), got {len(points)}")
        x1, y1, x2, y2 = points
        # Corners in either order mean the same box; normalise once here.
        points = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    elif len(points) < 6 or len(points) % 2:
        raise ValueError(f"{name} needs an even number of at least 6 coordinates, "
                         f"got {len(points)}")
    return ObjectShape(shape_type, points)


def parse_annotation(text: str) -> tuple[ObjectShape, ...]:
    """All objects of one annotation cell; empty or blank text gives no object."""
    return tuple(parse_object(piece) for piece in text.split(";") if piece.strip())


def read_annotations(csv_path: Path | str) -> AnnotationTable:
    """Parse an Object-CXR CSV; malformed rows are reported (and logged) and skipped.

    A first row that reads ``image_name,annotation`` is the header; a file
    without one is read from its first line.  A second row for an image
    already seen is a problem (which annotation is right is unknown), so the
    later row is skipped.
    """
    table = AnnotationTable()
    seen: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        start_line = 1
        for row in reader:
            # reader.line_num is the line where the record ends; quoted fields may span lines.
            line = start_line
            start_line = reader.line_num + 1
            cells = [cell.strip() for cell in row]
            if line == 1 and tuple(c.lower() for c in cells[:2]) == HEADER:
                continue
            if not any(cells):
                continue  # blank line
            problem = _check_row(cells, seen)
            if problem is None:
                try:
                    objects = parse_annotation(cells[1] if len(cells) > 1 else "")
                except ValueError as error:
                    problem = str(error)
            if problem is not None:
                table.problems.append(ParseProblem(line, problem))
                continue
            seen[cells[0]] = line
            table.images.append(AnnotatedImage(cells[0], objects, line))
    for problem in table.problems:
        logger.warning("%s %s; row skipped", Path(csv_path).name, problem)
    return table


def _check_row(cells: list[str], seen: dict[str, int]) -> str | None:
    if len(cells) > 2 and any(cells[2:]):
        return f"expected 2 columns (image_name,annotation), got {len(cells)}"
    if not cells[0]:
        return "empty image_name"
    if cells[0] in seen:
        return f"duplicate image_name (first on line {seen[cells[0]]})"
    return None


def draw_objects(objects: tuple[ObjectShape, ...] | list[ObjectShape], height: int,
                 width: int) -> np.ndarray:
    """A uint8 (height, width) mask, 1 inside any object, drawn at source resolution.

    Rectangles include both corner pixels; an ellipse fills the ellipse
    inscribed in its box; a polygon is filled (even-odd is not used: a
    self-crossing outline still marks everything it encloses).  Parts outside
    the image are clipped.
    """
    mask = np.zeros((height, width), np.uint8)
    for shape in objects:
        coords = np.round(np.asarray(shape.points, np.float64)).astype(np.int64)
        if shape.shape_type == RECTANGLE:
            x1, y1, x2, y2 = coords
            mask[max(y1, 0):max(y2 + 1, 0), max(x1, 0):max(x2 + 1, 0)] = 1
        elif shape.shape_type == ELLIPSE:
            x1, y1, x2, y2 = shape.points
            centre = (int(round((x1 + x2) / 2)), int(round((y1 + y2) / 2)))
            axes = (int(round((x2 - x1) / 2)), int(round((y2 - y1) / 2)))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        else:
            cv2.fillPoly(mask, [coords.reshape(-1, 2).astype(np.int32)], 1)
    return mask
