"""Graph node 1: read a single-frame grayscale radiograph and bring it to display values.

Decoding is tolerant where a source is merely sloppy (Rescale Slope 0, a window
of width 0, missing VOI) and strict where the pixels cannot be trusted: every
such file is rejected with one line that names the reason and never the
patient.  Reasons are built from our own words and DICOM attribute values
that carry no identity (modality, SOP class, photometric interpretation,
frame count, transfer syntax, tags).

pydicom converts an element when it is first read; the loader reads every
element of the file (nested sequences included) before anything else, so an
element that cannot be decoded (a bit flip that makes its VR unknown, say)
rejects that one file here instead of failing a later node or the graph.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom import Dataset, config, dcmread
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .case import CASE_PORT, Case

logger = logging.getLogger(__name__)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SUPPORTED_SOP_CLASSES = {
    CR_IMAGE_STORAGE: "CR Image Storage",
    DX_FOR_PRESENTATION: "Digital X-Ray Image Storage - For Presentation",
    DX_FOR_PROCESSING: "Digital X-Ray Image Storage - For Processing",
    SECONDARY_CAPTURE: "Secondary Capture Image Storage",
}


_CODE_FORM = re.compile(r"[A-Z0-9_ ]{1,16}")  # CS
_UID_FORM = re.compile(r"[0-9.]{1,64}")  # UI
_NAME_FORM = re.compile(r"[A-Za-z0-9 ()/.-]{0,80}")  # pydicom's UID names
_MESSAGE_FORM = re.compile(r"[A-Za-z0-9 ,.:;()\[\]_/=<>+-]*")
#: deeper nesting of sequences is rejected (pydicom reads sequences recursively)
MAX_SEQUENCE_DEPTH = 32
#: syntaxes whose frames pydicom may hand to GDCM's libjpeg, which prints its complaints about a stream that
#: is no JPEG straight to the process's stderr, outside the file's one-line reason
_LIBJPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                               "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})
#: start-of-frame markers of DCT and lossless JPEG (0xC4, 0xC8 and 0xCC are other segments)
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class RejectedInput(Exception):
    """An input that cannot be analysed; ``str()`` is the one-line reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason.splitlines()[0] if reason else "unknown reason"
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class LoaderConfig:
    allowed_modalities: frozenset[str] = frozenset({"CR", "DX", "OT"})
    allowed_sop_classes: frozenset[str] = frozenset(SUPPORTED_SOP_CLASSES)
    #: Rows x Columns above this are rejected before decoding (a 2-byte image of 2**26 pixels is 128 MiB)
    max_pixels: int = 2**26
    #: refuse an input whose SOP Instance UID an earlier input of the same run had (``xiqa analyze``:
    #: a resend or an edited copy would write into the first one's output folder and replace it)
    refuse_repeated_uids: bool = False


@dataclass
class SourceImage:
    """A decoded source: display pixels in [0, 1] (bright = dense) and its dataset."""

    path: Path
    dataset: Dataset = field(repr=False)
    pixels: np.ndarray = field(repr=False)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]


def _short(error: BaseException) -> str:
    """The error's type and first line; the line only when it quotes nothing (libraries quote values)."""
    text = str(error).strip().splitlines()
    if not text or not _MESSAGE_FORM.fullmatch(text[0][:160]):
        return type(error).__name__
    return f"{type(error).__name__}: {text[0][:160]}"


def _read_dataset(path: Path) -> Dataset:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise RejectedInput(path, f"cannot read file ({error.strerror})") from None
    if size == 0:
        raise RejectedInput(path, "empty file (0 bytes)")
    try:
        return dcmread(path)
    except InvalidDicomError:
        raise RejectedInput(path, "not a DICOM file (no DICM prefix and no valid header)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError) as error:
        raise RejectedInput(path, f"truncated or corrupt DICOM header ({_short(error)})") from None


@contextmanager
def _values_unchecked() -> Iterator[None]:
    """Convert without pydicom's value checks: its warnings quote the value (a birth date, say) into the
    logs, and decoding is tolerant anyway; what the loader relies on, it checks in its own words."""
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


def _decode_every_element(path: Path, ds: Dataset, depth: int = 0) -> None:
    """Convert each raw element of ``ds`` and of its sequence items now, naming the first that fails.

    Only the tag and the error type go into the reason: a value may carry identity.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise RejectedInput(path, f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except Exception as error:  # noqa: BLE001 - whatever pydicom raises, this file is unusable
            raise RejectedInput(path, f"element {tag} cannot be decoded ({type(error).__name__})") from None
        if element.VR == "SQ":
            for item in element.value:
                _decode_every_element(path, item, depth + 1)


def _quoted(value: object, form: re.Pattern[str]) -> str:
    """``value`` as text when it has the form its VR allows; a damaged element may have swallowed the
    elements after it (patient identity included), so anything else is never echoed."""
    text = str(value)
    return text if form.fullmatch(text) else "(not a valid value)"


def _check_header(path: Path, ds: Dataset, config: LoaderConfig) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class:
        raise RejectedInput(path, "no SOP Class UID (truncated or incomplete header)")
    if sop_class not in config.allowed_sop_classes:
        uid = _quoted(sop_class, _UID_FORM)
        # pydicom names a UID it does not know by the UID itself
        name = SUPPORTED_SOP_CLASSES.get(sop_class) or getattr(ds.get("SOPClassUID"), "name", "")
        name = "" if name == sop_class else name
        raise RejectedInput(path, f"SOP class {uid} {_quoted(name, _NAME_FORM)}".rstrip()
                            + " is not a supported radiograph class")
    modality = str(ds.get("Modality", "")) or "missing"
    if modality not in config.allowed_modalities:
        allowed = ", ".join(sorted(config.allowed_modalities))
        raise RejectedInput(path, f"modality {_quoted(modality, _CODE_FORM)} is not allowed "
                                  f"(allowed: {allowed})")
    if "PixelData" not in ds:
        raise RejectedInput(path, "no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RejectedInput(path, f"colour or non-grayscale image (PhotometricInterpretation "
                                  f"{_quoted(photometric, _CODE_FORM) if photometric else 'missing'}) "
                                  "is not supported")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise RejectedInput(path, f"multi-frame image ({frames} frames) is not supported")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > config.max_pixels:
        raise RejectedInput(path, f"image of {rows} x {columns} pixels is larger than the limit of "
                                  f"{config.max_pixels} pixels")


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2)) / width, 0.0, 1.0)
    return np.clip((values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5, 0.0, 1.0)


def _first_number(value) -> float | None:
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def display_values(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then MONOCHROME1 inversion; float32 in [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    if float(ds.get("RescaleSlope", 1) or 0) == 0:
        values = stored.astype(np.float64)  # a zero slope would flatten the image: ignore it
    else:
        values = apply_modality_lut(stored, ds).astype(np.float64)

    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if ds.get("VOILUTSequence"):
        lut_item = ds.VOILUTSequence[0]
        bits = int(lut_item.LUTDescriptor[2])
        # LUT lookup needs integer indices; Modality LUT outputs are integral for integer slopes
        lookup = values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
        display = apply_voi(lookup, ds, index=0).astype(np.float64) / (2**bits - 1)
    elif center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        display = _window(values, center, width, function)
    else:
        low, high = float(values.min()), float(values.max())
        display = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        display = 1.0 - display
    return np.clip(display, 0.0, 1.0).astype(np.float32)


def _not_a_jpeg_stream(ds: Dataset) -> str | None:
    """Why the first frame is no DCT or lossless JPEG stream, or None when it starts like one."""
    try:
        stream = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception:  # noqa: BLE001 - broken encapsulation: the decoders report it in their words
        return None
    if stream[:2] != b"\xff\xd8":
        return f"the stream is no JPEG image (it starts 0x{stream[:2].hex() or 'empty'}, not 0xffd8)"
    position = 2
    while position + 4 <= len(stream) and stream[position] == 0xFF:
        marker = stream[position + 1]
        if marker in _JPEG_FRAME_MARKERS:
            return None
        if marker == 0xF7:
            return "the stream is JPEG-LS (frame marker 0xfff7), not JPEG"
        position += 2 + int.from_bytes(stream[position + 2:position + 4], "big")
    return "the stream has no JPEG frame header"


def load_source_image(path: Path | str, config: LoaderConfig = LoaderConfig()) -> SourceImage:
    """Read, check and decode one file.

    Raises
    ------
    RejectedInput
        The file is not a usable single-frame grayscale CR/DX/SC radiograph.
    """
    path = Path(path)
    with _values_unchecked():
        ds = _read_dataset(path)
        _decode_every_element(path, ds.file_meta)
        _decode_every_element(path, ds)
    _check_header(path, ds, config)
    syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
    not_jpeg = _not_a_jpeg_stream(ds) if str(syntax) in _LIBJPEG_SYNTAXES else None
    try:
        if not_jpeg:  # only Pillow, which recognises what the stream is and prints nothing
            ds.pixel_array_options(decoding_plugin="pillow")
        stored = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - any decoder failure is a rejection, not a crash
        syntax_name = _quoted(getattr(syntax, "name", str(syntax)), _NAME_FORM)
        raise RejectedInput(path, f"pixel data cannot be decoded ({syntax_name}): "
                                  + (not_jpeg or _short(error))) from None
    if stored.ndim != 2:
        raise RejectedInput(path, f"pixel data has shape {stored.shape}, expected rows x columns")
    return SourceImage(path, ds, display_values(ds, stored))


def expand_inputs(inputs: Iterable[Path | str]) -> Iterator[Path]:
    """Files as given and folders recursively (sorted, hidden files skipped)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and not hidden:
                    yield child
        else:
            yield path


def load_case(path: Path | str, config: LoaderConfig = LoaderConfig()) -> Case:
    """A new case for ``path``; a rejected file gives a case that carries the reason.

    Nothing a file contains can raise out of here: an unforeseen error rejects
    that file by its type alone (its message may quote dataset values).
    """
    case = Case(Path(path))
    with case.timed("load"):
        try:
            case.source = load_source_image(path, config)
        except RejectedInput as rejection:
            case.error, case.rejected = rejection.reason, True
        except Exception as error:  # noqa: BLE001 - one unreadable file never stops the graph
            case.error, case.rejected = f"cannot be read ({type(error).__name__})", True
            logger.debug("traceback for %s", case.path.name, exc_info=True)
    return case


def refuse_repeated_uid(case: Case, first_with_uid: dict[str, Path]) -> None:
    """Reject ``case`` when an earlier input in ``first_with_uid`` had its SOP Instance UID.

    Outputs go to one folder per SOP Instance UID, so a second input with the same UID (a resend,
    or a copy of one file with edits) would silently replace the first one's results; the first
    input's results are kept and the second is refused, naming the first.  ``first_with_uid`` is
    updated with the case's UID when it is new.
    """
    if not case.ok:
        return
    uid = case.source.sop_instance_uid
    first = first_with_uid.setdefault(uid, case.path)
    if first != case.path:
        case.error = (f"duplicate SOP Instance UID: {first} in this batch has the same one "
                      "(its results are kept, this input is not analysed)")
        case.rejected = True


class PathFeed:
    """The paths the loader reads, given before or while the graph runs (thread-safe).

    The loader ticks on an ``AsynchronousCondition`` that this feed keeps in step with its queue:
    ready while a path waits, waiting (the scheduler sleeps, nothing polls) while none does, and
    never once the feed is closed and empty, which lets the graph end after the last case.  A feed
    made from a list and closed is the one-shot run of ``xiqa analyze``; the node keeps one open.
    """

    def __init__(self, paths: Iterable[Path | str] = (), *, closed: bool = False) -> None:
        self._paths: deque[Path] = deque(Path(p) for p in paths)
        self._closed = closed
        self._lock = threading.Lock()
        self._condition = None
        self.bound = threading.Event()  # set once the graph runs and the loader holds its condition

    def bind(self, condition) -> None:
        """The loader's condition, once the graph is running (its state is not kept before that)."""
        with self._lock:
            self._condition = condition
            self._signal()
        self.bound.set()

    def put(self, path: Path | str) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the feed is closed")
            self._paths.append(Path(path))
            self._signal()

    def close(self) -> None:
        """No more paths: the graph ends once the waiting ones are through."""
        with self._lock:
            self._closed = True
            self._signal(wake=True)

    def take(self) -> Path | None:
        """The next path; None only for the wake-up call after ``close`` (nothing to load)."""
        with self._lock:
            path = self._paths.popleft() if self._paths else None
            self._signal()
            return path

    def _signal(self, wake: bool = False) -> None:
        from holoscan.conditions import AsynchronousEventState as State

        if self._condition is None:
            return
        # a scheduler asleep on a waiting condition does not notice it turning to NEVER, so close
        # wakes the loader once (DONE); that empty tick sets NEVER and the graph ends
        if self._paths or (wake and self._condition.event_state == State.EVENT_WAITING):
            state = State.EVENT_DONE
        else:
            state = State.EVENT_NEVER if self._closed else State.EVENT_WAITING
        if self._condition.event_state != state:
            self._condition.event_state = state


class LoaderOperator(Operator):
    """Source node. Named output ``case``: one ``Case`` per path taken from its ``PathFeed``.

    Give it the ``AsynchronousCondition`` that it hands to the feed when the graph starts.
    """

    def __init__(self, fragment: Fragment, condition, *args, feed: PathFeed,
                 config: LoaderConfig = LoaderConfig(), **kwargs) -> None:
        self.feed, self.config, self._condition = feed, config, condition
        self._first_with_uid: dict[str, Path] = {}  # SOP Instance UID -> the input that had it first
        super().__init__(fragment, condition, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(CASE_PORT)

    def start(self) -> None:
        self.feed.bind(self._condition)

    def compute(self, op_input, op_output, context) -> None:
        path = self.feed.take()
        if path is not None:
            case = load_case(path, self.config)
            if self.config.refuse_repeated_uids:
                refuse_repeated_uid(case, self._first_with_uid)
            op_output.emit(case, CASE_PORT)
