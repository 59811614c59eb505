"""Graph node 7a: the foreign-object mask as a DICOM Segmentation (SEG).

Two BINARY segments, one per object class (DESIGN "Beyond the thesis", object classes), at the
source's rows x columns: 1 "Removable object" (category SCT 260787004 "Physical object", type
SCT 19227008 "Foreign body") and 2 "Medical device" (category "Physical object", type XQ-0050
of our documented private scheme: CID 7193 has no term for devices as a class; see
``codes.py``).  They hold the objects that scoring counted over the chest (markers, text and
shutters outside it are left out, as they are from Q_img), derived from and referencing the
source image, with the algorithm (name, version, model id) in each segment's Algorithm
Identification.  Objects that were not classed are removable.

Its one frame maps pixel for pixel onto the source.  A SEG of a projection
radiograph (no Frame of Reference) needs no geometry, but the OHIF Viewer
(3.13) cannot show one without: its SEG viewport reads the shared Pixel
Measures (``OHIFCornerstoneSEGViewport._getReferencedDisplaySetMetadata``)
and the cornerstone adapters refuse a frame without Image Orientation
(Patient) (``labelmapImagesFromBuffer``: "SEG frame 1 is missing
ImageOrientationPatient").  So the shared functional groups carry both:

* Pixel Measures with the source's Pixel Spacing when it has a valid one
  (empty otherwise; no Slice Thickness, which PS3.3 C.7.6.16.2.1 asks only
  with a Frame of Reference);
* Plane Orientation (Patient): the source's Image Orientation (Patient) when
  it has one, else ``1\\0\\0\\0\\1\\0``.  Without a Frame of Reference this
  says only that the frame's rows and columns run along the source's, which
  is what cornerstone assumes for a source without orientation.

dciodvfy and PixelMed accept both; highdicom's ``segread`` (0.28) does not
read such a SEG, as it wants a Slice Thickness in any Pixel Measures
(``xiqa.training.datasets.read_seg_mask`` reads it with pydicom).

An image without objects still gets a SEG: its frames are empty
(``omit_empty_frames=False``), one per segment.  "Analysed, nothing found" then looks the same
to a PACS as "analysed, something found", and the SR can always list the SEG
as its evidence.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset

from .case import Case
from .codes import CLASS_SEGMENTS, DEFAULT_UID_ROOT, derive_uid, private_coding_scheme
from .loader import SourceImage
from .scoring import QualityResult, counted_at_source
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

#: Recommended display colour of each class' segment (RGB; written as CIELab): removable objects
#: cyan, as the SC's outlines; medical devices green.
DISPLAY_RGB = {"removable": (0, 255, 255), "device": (0, 200, 80)}


def check_source_mask(mask: object, shape: tuple[int, int]) -> np.ndarray:
    """The mask as a boolean array, after checking it matches the source.

    Raises
    ------
    TypeError
        ``mask`` is not a numpy array of bool or integer type.
    ValueError
        ``mask`` is not ``shape`` or holds values other than 0 and 1.
    """
    if not isinstance(mask, np.ndarray):
        raise TypeError(f'Argument "mask" must be a numpy array, got {type(mask).__name__}')
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f'Argument "mask" must be bool or integer, got dtype {mask.dtype}')
    if mask.shape != tuple(shape):
        raise ValueError(f'Argument "mask" must have the source\'s shape {tuple(shape)} '
                         f"(rows, columns), got {mask.shape}")
    if mask.dtype != np.bool_ and mask.size and (mask.min() < 0 or mask.max() > 1):
        raise ValueError('Argument "mask" must hold only 0 and 1, got values in '
                         f"[{mask.min()}, {mask.max()}]")
    return mask.astype(bool)


def build_segmentation(
    source: SourceImage,
    mask: np.ndarray,
    algorithm: AlgorithmInfo,
    uid_root: str | None = DEFAULT_UID_ROOT,
    device_mask: np.ndarray | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``mask`` and ``device_mask`` (source rows x columns) in the source's study.

    Parameters
    ----------
    source: xiqa.operators.loader.SourceImage
        The analysed image; its dataset gives study, patient and references.
    mask: numpy.ndarray
        Binary mask (bool or 0/1 integers) of the removable (or not classed) objects at the
        source's resolution, e.g. from :func:`xiqa.operators.scoring.counted_at_source`;
        segment 1.
    algorithm: AlgorithmInfo
        Name, version and model id, written to the segment description.
    uid_root: str | None, optional
        Root for the derived UIDs; ``None`` gives ``2.25.`` UIDs.
    device_mask: numpy.ndarray | None, optional
        The medical devices, as ``mask``; segment 2 (empty when None).

    Raises
    ------
    TypeError
        ``source`` is not a SourceImage, ``algorithm`` not an AlgorithmInfo, or
        ``mask`` not a bool/integer numpy array.
    ValueError
        ``mask`` does not match the source's shape or is not binary, or the
        source lacks the UIDs needed to reference it.
    """
    check_argument_type("source", source, SourceImage, "a SourceImage")
    check_argument_type("algorithm", algorithm, AlgorithmInfo, "an AlgorithmInfo")
    shape = (int(source.dataset.Rows), int(source.dataset.Columns))
    binary = check_source_mask(mask, shape)
    devices = np.zeros(shape, bool) if device_mask is None else check_source_mask(device_mask, shape)
    reference = reference_dataset(source.dataset)
    # the geometry is added below (module docstring), not by highdicom from the reference
    if "PixelSpacing" in reference:
        del reference.PixelSpacing
    identity = output_identity(source.dataset, OutputKind.SEG, algorithm, uid_root)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.identification_sequence(),
            tracking_uid=derive_uid(("segment", identity.sop_instance_uid, number), uid_root),
            tracking_id=f"xiqa {label.lower()}s",
            display_color=hd.color.CIELabColor.from_rgb(*DISPLAY_RGB[object_class]),
        )
        for number, object_class, label, category, kind in CLASS_SEGMENTS
    ]
    seg = hd.seg.Segmentation(
        source_images=[reference],
        pixel_array=np.stack([binary, devices], axis=-1)[None],  # (frames, rows, columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **document_arguments(identity, algorithm),
        content_label="XIQA_OBJECTS",
        content_description="Objects over the chest (those Q_img counts), by class",
        omit_empty_frames=False,
    )
    # General Image: Patient Orientation is Type 2C, required here because a SEG of a
    # projection image has no Frame of Reference; highdicom leaves it out.  The SEG's pixels
    # are the source's, so is its orientation (empty when the source has none).
    orientation = patient_orientation(source.dataset)
    seg.PatientOrientation = list(orientation) if orientation else ""
    describe_body_part(seg, source.dataset)  # no Laterality: dciodvfy wants none in a SEG
    # the device segment's type is of our private scheme: documented as in the SR (SOP Common)
    seg.CodingSchemeIdentificationSequence = [private_coding_scheme()]
    _add_viewer_geometry(seg, source.dataset)
    return seg


#: Plane Orientation of a source without Image Orientation (Patient): rows along rows.
ALIGNED_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _add_viewer_geometry(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """Shared Pixel Measures and Plane Orientation (Patient), for viewers (module docstring)."""
    measures = Dataset()
    spacing = pixel_spacing(source)
    if spacing is not None:
        measures.PixelSpacing = [f"{value:.10g}"[:16] for value in spacing]
    plane = Dataset()
    plane.ImageOrientationPatient = list(_orientation(source))
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [plane]


def _orientation(source: Dataset) -> tuple[float, ...]:
    """The source's Image Orientation (Patient) when it is six finite numbers, else aligned."""
    try:
        values = tuple(float(v) for v in source.get("ImageOrientationPatient") or ())
    except (TypeError, ValueError):
        return ALIGNED_ORIENTATION
    if len(values) != 6 or not np.all(np.isfinite(values)) or not (
            np.isclose(np.linalg.norm(values[:3]), 1, atol=1e-3)
            and np.isclose(np.linalg.norm(values[3:]), 1, atol=1e-3)):
        return ALIGNED_ORIENTATION
    return values


class SegWriterOperator(DicomWriterOperator):
    """The SEG node: the mask at source resolution as one BINARY segment per object class."""

    kind = OutputKind.SEG
    chest_only = True

    def build(self, case: Case) -> Dataset:
        removable, devices = class_masks_at_source(case.segmentation.mask_for_source(case.source.shape),
                                                   case.quality)
        return build_segmentation(case.source, removable, algorithm_for_case(case), self.uid_root, devices)


def class_masks_at_source(source_mask: np.ndarray, quality: QualityResult) -> tuple[np.ndarray, np.ndarray]:
    """(removable objects, medical devices) of the counted objects at source resolution."""
    return (counted_at_source(source_mask, quality, "removable"),
            counted_at_source(source_mask, quality, "device"))
