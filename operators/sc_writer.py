"""Graph node 7b: the saliency heatmap over the radiograph as an RGB Secondary Capture.

What the radiographer sees, at the source's rows x columns:

- the source in display values (VOI applied, MONOCHROME1 inverted) as grey;
- the saliency map, min-max normalised for display only, as a JET colour map
  whose opacity grows with saliency (unimportant areas stay readable);
- a legend in the top-left corner: algorithm and version, Q_img and verdict,
  Q_filtered and its verdict, number of objects, and the colour scale;
- the outlines of the segmented objects, drawn last so none hides under the legend.

The legend carries no patient identity, so Burned In Annotation is ``NO``.

Compression (:class:`ScCompression`): the default is lossless JPEG-LS, because it is the
fastest lossless encoder at hand and a 2,000 px plate has 1.0 s on 2 cores for the whole graph
(``benchmarks/pipeline.py``).  On the heatmap of such a plate (12.0 MB as RGB) CharLS needs
0.25-0.29 s of one core; lossless JPEG 2000 needs 0.63-0.77 s with Pillow's OpenJPEG and
0.55-0.64 s with pylibjpeg-openjpeg (fewer resolution levels or other code-blocks gain a few per
cent at best; ``benchmarks/results/sc_compression.md``), and even with two OpenJPEG threads it
took 0.55-0.65 s of the 1.1-1.5 s that a plate took through the graph.
The price is size: JPEG-LS has no colour transform in DICOM, so it codes three near-grey planes
where JPEG 2000's reversible colour transform codes one plus small chroma: 4.4 MB against 2.5 MB
on that plate, 7.3 MB against 2.6 MB of 15.0 MB on the 2,500 x 2,000 phantom of
``benchmarks/sc_compression.py``.  RLE barely shrinks the picture.  JPEG baseline is smaller
still and looks the same (PSNR about 40 dB), but it changes pixel values, most at the thin cyan
outlines (chroma subsampling): such an SC says so (Lossy Image Compression ``01``, with ratio
and method).  A source that was lossy compressed makes the SC lossy as well.

JPEG 2000, where chosen, is encoded with Pillow's OpenJPEG rather than highdicom's
(pylibjpeg-openjpeg): the same lossless codestream, but OpenJPEG then uses ``OPJ_NUM_THREADS``
threads (default here: every core).
"""

from __future__ import annotations

import os
from enum import Enum
from io import BytesIO

import cv2
import highdicom as hd
import numpy as np
from monai.deploy.core import Fragment
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from .case import Case
from .codes import DEFAULT_UID_ROOT, SOURCE_IMAGE_PURPOSE
from .loader import SourceImage
from .preprocess import resize_image
from .scoring import QualityResult, counted_at_source
from .seg_writer import DISPLAY_RGB, check_source_mask
from .writer_common import (
    AlgorithmInfo,
    DicomWriterOperator,
    OutputKind,
    algorithm_for_case,
    check_argument_type,
    describe_body_part,
    document_arguments,
    output_identity,
    patient_orientation,
    pixel_spacing,
    reference_dataset,
)

#: Opacity of the heatmap where saliency is 1 (it falls linearly to 0 at saliency 0).
HEATMAP_MAX_ALPHA = 0.55
#: Object outline colour (RGB): cyan stands out against both grey and JET; the SEG's colour too.
CONTOUR_RGB = DISPLAY_RGB["removable"]
LEGEND_TEXT_RGB = (255, 255, 255)
LEGEND_BACKGROUND_ALPHA = 0.65


class ScCompression(str, Enum):
    """How the SC's pixels are stored."""

    NONE = "none"
    """Explicit VR Little Endian, uncompressed."""
    RLE = "rle"
    """RLE Lossless: every decoder has it, but it shrinks the picture least."""
    JPEG_LS = "jpeg-ls"
    """JPEG-LS Lossless (no colour transform): the default, the fastest lossless encoder."""
    JPEG_2000 = "jpeg2000"
    """JPEG 2000 Lossless with the reversible colour transform: the smallest lossless file."""
    JPEG = "jpeg"
    """JPEG baseline (quality 95, YBR_FULL_422): lossy, flagged as such."""

    @property
    def transfer_syntax(self) -> UID:
        return {"none": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg-ls": JPEGLSLossless,
                "jpeg2000": JPEG2000Lossless, "jpeg": JPEGBaseline8Bit}[self.value]

    @property
    def photometric_interpretation(self) -> hd.PhotometricInterpretationValues:
        """What highdicom must be told: the codecs' colour spaces, RGB otherwise."""
        return {"jpeg": hd.PhotometricInterpretationValues.YBR_FULL_422,
                "jpeg2000": hd.PhotometricInterpretationValues.YBR_RCT}.get(
            self.value, hd.PhotometricInterpretationValues.RGB)

    @property
    def lossy(self) -> bool:
        return self is ScCompression.JPEG


DEFAULT_COMPRESSION = ScCompression.JPEG_LS
#: Lossy Image Compression Method (0028,2114) of JPEG baseline.
JPEG_BASELINE_METHOD = "ISO_10918_1"


def _check_map(name: str, values: object) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise TypeError(f'Argument "{name}" must be a numpy array, got {type(values).__name__}')
    if values.ndim != 2 or min(values.shape) < 1:
        raise ValueError(f'Argument "{name}" must be a non-empty 2-D array, got shape {values.shape}')
    if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f'Argument "{name}" must be numeric, got dtype {values.dtype}')
    if not np.all(np.isfinite(values)):
        raise ValueError(f'Argument "{name}" must be finite (no NaN or inf)')
    return values.astype(np.float32, copy=False)  # read only by the callers: no copy of float32


def display_saliency(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Saliency resized to ``shape`` and min-max normalised to [0, 1]; all zeros when flat."""
    resized = resize_image(saliency, shape[0], shape[1])
    low, high = float(resized.min()), float(resized.max())
    if high - low < 1e-6:
        return np.zeros(shape, np.float32)
    resized -= low
    resized /= high - low
    return resized


def _jet(values: np.ndarray) -> np.ndarray:
    """RGB uint8 JET colours of values in [0, 1]."""
    scaled = np.clip(values, 0, 1)
    scaled *= 255
    indices = np.round(scaled, out=scaled).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(indices, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _legend_lines(quality: QualityResult, algorithm: AlgorithmInfo) -> list[str]:
    return [
        f"{algorithm.name} {algorithm.version}",
        f"Q_img {quality.q_img:.2f}  {quality.verdict.value}",
        *([f"Q_removable {quality.q_removable:.2f}  {quality.verdict_removable.value}"]
          if quality.classified else []),
        f"Q_filtered {quality.q_filtered:.2f}  {quality.verdict_filtered.value}",
        f"objects {len(quality.objects)}" + (f" ({len(quality.devices)} devices)" if quality.devices else ""),
        "saliency  low -> high",
    ]


def _draw_legend(image: np.ndarray, lines: list[str]) -> None:
    """Draw the legend box in place, scaled to the image and shrunk until it fits."""
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.3, min(height, width) / 900)
    while True:
        thickness = max(1, int(round(scale * 1.6)))
        sizes = [cv2.getTextSize(line, font, scale, thickness)[0] for line in lines]
        line_height = int(max(h for _, h in sizes) * 1.8) + 1
        margin = max(2, line_height // 3)
        box_width = max(w for w, _ in sizes) + 2 * margin
        box_height = line_height * (len(lines) + 1) + 2 * margin  # one row for the colour bar
        if (box_width <= width - 2 and box_height <= height - 2) or scale <= 0.2:
            break
        scale *= 0.85
    box_width, box_height = min(box_width, width - 2), min(box_height, height - 2)
    x0, y0 = 1, 1
    region = image[y0:y0 + box_height, x0:x0 + box_width].astype(np.float32)
    image[y0:y0 + box_height, x0:x0 + box_width] = np.round(
        region * (1 - LEGEND_BACKGROUND_ALPHA)).astype(np.uint8)
    for index, line in enumerate(lines):
        baseline = y0 + margin + line_height * (index + 1) - line_height // 4
        cv2.putText(image, line, (x0 + margin, baseline), font, scale, LEGEND_TEXT_RGB,
                    thickness, cv2.LINE_AA)
    bar_width = max(1, box_width - 2 * margin)
    bar_height = max(1, line_height // 2)
    bar_top = y0 + margin + line_height * len(lines) + line_height // 4
    bar = _jet(np.tile(np.linspace(0, 1, bar_width, dtype=np.float32), (bar_height, 1)))
    bottom = min(bar_top + bar_height, height)
    image[bar_top:bottom, x0 + margin:x0 + margin + bar_width] = bar[:bottom - bar_top]


def render_heatmap(
    pixels: np.ndarray,
    saliency: np.ndarray,
    mask: np.ndarray,
    quality: QualityResult,
    algorithm: AlgorithmInfo,
) -> np.ndarray:
    """The RGB picture of the SC: grey image, heatmap, object outlines and legend.

    Parameters
    ----------
    pixels: numpy.ndarray
        Display values in [0, 1] at source resolution (``SourceImage.pixels``).
    saliency: numpy.ndarray
        Saliency map of any 2-D shape (normally 256 x 256), resized to the source.
    mask: numpy.ndarray
        Binary object mask at source resolution.
    quality, algorithm:
        What the legend shows.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (rows, columns, 3), RGB.

    Raises
    ------
    TypeError
        An array argument is not a numeric numpy array.
    ValueError
        ``pixels`` or ``saliency`` is not 2-D and finite, or ``mask`` does not
        match ``pixels``.
    """
    display = np.clip(_check_map("pixels", pixels), 0.0, 1.0)
    shape = display.shape
    binary = check_source_mask(mask, shape)
    heat_level = display_saliency(_check_map("saliency", saliency), shape)
    # grey * (1 - alpha) + jet * alpha, in float32 as before, but the grey part is computed once
    # (2-D, not repeated to 3 channels) and every step in place: same values to the bit, and
    # each array of a 2,000 x 2,500 picture is allocated (and page-faulted) once
    display *= 255
    grey = np.round(display, out=display)
    alpha = HEATMAP_MAX_ALPHA * heat_level
    image = _jet(heat_level).astype(np.float32)
    image *= alpha[..., None]
    weighted_grey = np.subtract(1, alpha, out=alpha)  # alpha's last use was the line above
    weighted_grey *= grey
    image += weighted_grey[..., None]
    # no clip: a blend of values in [0, 255] with weights that sum to 1 stays within
    # [0, 255 + 1e-4] in float32, which rounds into [0, 255]
    image = np.round(image, out=image).astype(np.uint8)
    _draw_legend(image, _legend_lines(quality, algorithm))
    if binary.any():  # after the legend, so an object under the legend stays visible
        contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        thickness = max(1, int(round(min(shape) / 300)))
        cv2.drawContours(image, contours, -1, CONTOUR_RGB, thickness, cv2.LINE_8)
    return image


def build_heatmap_capture(
    source: SourceImage,
    saliency: np.ndarray,
    mask: np.ndarray,
    quality: QualityResult,
    algorithm: AlgorithmInfo,
    uid_root: str | None = DEFAULT_UID_ROOT,
    compression: ScCompression | str = DEFAULT_COMPRESSION,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of :func:`render_heatmap` in the source's study.

    Parameters
    ----------
    source: xiqa.operators.loader.SourceImage
        The analysed image (display pixels and dataset).
    saliency: numpy.ndarray
        Combined saliency map (normally 256 x 256, values in [0, 1]).
    mask: numpy.ndarray
        Binary object mask at source resolution.
    quality: xiqa.operators.scoring.QualityResult
        Scores shown in the legend.
    algorithm: AlgorithmInfo
        Name, version and model id.
    uid_root: str | None, optional
        Root for the derived UIDs; ``None`` gives ``2.25.`` UIDs.
    compression: ScCompression | str, optional
        Transfer syntax of the pixels (default lossless JPEG-LS).

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        A map has the wrong shape or values, ``compression`` is unknown, or
        the source lacks the UIDs needed to reference it.
    """
    check_argument_type("source", source, SourceImage, "a SourceImage")
    check_argument_type("quality", quality, QualityResult, "a QualityResult")
    check_argument_type("algorithm", algorithm, AlgorithmInfo, "an AlgorithmInfo")
    try:
        compression = ScCompression(compression)
    except ValueError:
        raise ValueError(f'Argument "compression" must be one of '
                         f"{[c.value for c in ScCompression]}, got {compression!r}") from None
    rgb = render_heatmap(source.pixels, saliency, mask, quality, algorithm)
    # JPEG 2000: highdicom stores the pixels as they are, and they are encoded below
    pillow_jpeg2000 = compression is ScCompression.JPEG_2000
    stored_as = ScCompression.NONE if pillow_jpeg2000 else compression
    reference = reference_dataset(source.dataset)
    identity = output_identity(source.dataset, OutputKind.SC, algorithm, uid_root)
    orientation = patient_orientation(source.dataset)
    single_letters = orientation is not None and all(len(v) == 1 for v in orientation)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=rgb,
        photometric_interpretation=stored_as.photometric_interpretation,
        bits_allocated=8,
        **document_arguments(identity, algorithm),
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        pixel_spacing=pixel_spacing(source.dataset),
        # highdicom accepts only single-letter orientations (and demands one for PATIENT);
        # the real value, or an empty Type 2 value, is set below.
        patient_orientation=orientation if single_letters else ("L", "F"),
        transfer_syntax_uid=stored_as.transfer_syntax,
    )
    if pillow_jpeg2000:
        _store_jpeg2000_lossless(sc, rgb)
    sc.PatientOrientation = list(orientation) if orientation else ""
    if not describe_body_part(sc, source.dataset):
        sc.Laterality = ""  # unknown body part: dciodvfy asks an SC for an empty Laterality
    sc.copy_patient_and_study_information(reference)
    _describe_derivation(sc, source.dataset, algorithm)
    _describe_compression(sc, source.dataset, compression)
    return sc


def encode_jpeg2000_lossless(rgb: np.ndarray) -> bytes:
    """A lossless JPEG 2000 codestream of an RGB picture: reversible 5/3 wavelet and colour transform."""
    # OpenJPEG reads its thread count from the environment only; a site's own setting wins
    os.environ.setdefault("OPJ_NUM_THREADS", str(os.cpu_count() or 1))
    buffer = BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG2000", irreversible=False, mct=1, no_jp2=True)
    return buffer.getvalue()


def _store_jpeg2000_lossless(sc: hd.sc.SCImage, rgb: np.ndarray) -> None:
    """Replace the SC's native RGB pixels with their lossless JPEG 2000 codestream (YBR_RCT)."""
    sc.PixelData = encapsulate([encode_jpeg2000_lossless(rgb)])
    sc["PixelData"].VR = "OB"
    sc["PixelData"].is_undefined_length = True
    sc.PhotometricInterpretation = ScCompression.JPEG_2000.photometric_interpretation.value
    sc.file_meta.TransferSyntaxUID = JPEG2000Lossless


def _describe_compression(sc: hd.sc.SCImage, source: Dataset, compression: ScCompression) -> None:
    """Lossy Image Compression: ``01`` when the source or this SC was lossy compressed.

    Ratio and method (Type 1C) list every lossy step: the source's, if it
    names them, then this SC's JPEG baseline.
    """
    source_lossy = str(source.get("LossyImageCompression", "")) == "01"
    sc.LossyImageCompression = "01" if source_lossy or compression.lossy else "00"
    if not compression.lossy:
        return
    ratios, methods = _values(source, "LossyImageCompressionRatio"), \
        _values(source, "LossyImageCompressionMethod")
    if len(ratios) != len(methods):  # a history that does not pair up cannot be extended
        ratios, methods = [], []
    uncompressed = int(sc.Rows) * int(sc.Columns) * int(sc.SamplesPerPixel)
    ratios.append(f"{uncompressed / len(sc.PixelData):.2f}")
    methods.append(JPEG_BASELINE_METHOD)
    sc.LossyImageCompressionRatio = ratios
    sc.LossyImageCompressionMethod = methods


def _values(source: Dataset, keyword: str) -> list[str]:
    value = source.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple, MultiValue)) else [str(value)]


def _describe_derivation(sc: hd.sc.SCImage, source: Dataset, algorithm: AlgorithmInfo) -> None:
    """General Image references to the source and a word on how the picture was made."""
    sc.BurnedInAnnotation = "NO"
    sc.RecognizableVisualFeatures = "NO"
    parameters = ", ".join(algorithm.parameters)
    sc.DerivationDescription = (
        f"Saliency heatmap{' (' + parameters + ')' if parameters else ''} and object outlines of "
        f"{algorithm.name} {algorithm.version} over the source image"
    )[:1024]
    purpose = hd.sr.CodedConcept.from_code(SOURCE_IMAGE_PURPOSE)
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [item]


class ScWriterOperator(DicomWriterOperator):
    """The heatmap Secondary Capture node (saliency blend, contours, legend)."""

    kind = OutputKind.SC
    chest_only = True

    def __init__(self, fragment: Fragment, *args,
                 compression: ScCompression | str = DEFAULT_COMPRESSION, **kwargs) -> None:
        self.compression = ScCompression(compression)
        super().__init__(fragment, *args, **kwargs)

    def build(self, case: Case) -> Dataset:
        mask = counted_at_source(case.segmentation.mask_for_source(case.source.shape), case.quality)
        return build_heatmap_capture(case.source, case.saliency.combined, mask, case.quality,
                                     algorithm_for_case(case), self.uid_root, self.compression)
