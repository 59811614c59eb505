"""All three DICOM outputs of one source image in one call (used by ``xiqa analyze``).

File names are ``<source SOP Instance UID>_<kind>.dcm`` (kind ``seg``, ``sc``,
``sr``; see :func:`xiqa.operators.writer_common.output_path`), written atomically.
The graph runs the same builders as three nodes (``SegWriterOperator``,
``ScWriterOperator``, ``SrWriterOperator``); this module is for callers
outside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset

from .codes import DEFAULT_UID_ROOT
from .loader import SourceImage
from .scoring import QualityResult
from .segmentation import mask_at_source
from .writer_common import AlgorithmInfo, OutputKind, output_path, save_atomically


@dataclass(frozen=True)
class BuiltOutputs:
    """The three datasets before they are written."""

    seg: Dataset
    sc: Dataset
    sr: Dataset

    def by_kind(self) -> dict[OutputKind, Dataset]:
        return {OutputKind.SEG: self.seg, OutputKind.SC: self.sc, OutputKind.SR: self.sr}


def build_outputs(
    source: SourceImage,
    probability: np.ndarray,
    saliency: np.ndarray,
    quality: QualityResult,
    summary: str,
    summary_source: str,
    algorithm: AlgorithmInfo,
    threshold: float = 0.5,
    uid_root: str | None = DEFAULT_UID_ROOT,
) -> BuiltOutputs:
    """SEG, SC and SR for one source, in memory.

    Parameters
    ----------
    source: xiqa.operators.loader.SourceImage
        The analysed image.
    probability: numpy.ndarray
        Segmentation probability on the analysis grid (256 x 256, values in [0, 1]).
    saliency: numpy.ndarray
        Combined saliency map on the analysis grid.
    quality: xiqa.operators.scoring.QualityResult
        Scores of the mask ``probability > threshold``.
    summary, summary_source:
        The summary text and ``"llm"`` or ``"template"``.
    algorithm: AlgorithmInfo
        Name, version, model id and parameters.
    threshold: float, optional
        Probability threshold of the mask (the model's threshold).
    uid_root: str | None, optional
        Root for the derived UIDs; ``None`` gives ``2.25.`` UIDs.

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        An argument has a wrong shape or value (see the three builders).
    """
    from .sc_writer import build_heatmap_capture
    from .seg_writer import build_segmentation, class_masks_at_source
    from .sr_writer import build_report

    if not isinstance(probability, np.ndarray) or probability.ndim != 2:
        raise ValueError('Argument "probability" must be a 2-D numpy array')
    if not 0.0 < threshold < 1.0:
        raise ValueError(f'Argument "threshold" must be in (0, 1), got {threshold}')
    mask = mask_at_source(probability, source.shape, threshold)
    grid_mask = (probability > threshold).astype(np.uint8)
    # objects not classed: the whole mask is segment 1, as before classes
    removable, devices = class_masks_at_source(mask, quality) if quality.classified else (mask, None)
    seg = build_segmentation(source, removable, algorithm, uid_root, devices)
    sc = build_heatmap_capture(source, saliency, mask, quality, algorithm, uid_root)
    sr = build_report(source, quality, seg, summary, summary_source, algorithm,
                      grid_mask=grid_mask if grid_mask.shape == tuple(quality.grid_shape) else None,
                      uid_root=uid_root)
    return BuiltOutputs(seg, sc, sr)


def write_outputs(
    source: SourceImage,
    probability: np.ndarray,
    saliency: np.ndarray,
    quality: QualityResult,
    summary: str,
    summary_source: str,
    algorithm: AlgorithmInfo,
    output_dir: Path,
    threshold: float = 0.5,
    uid_root: str | None = DEFAULT_UID_ROOT,
) -> dict[str, Path]:
    """Build and write SEG, SC and SR; returns ``{"seg": path, "sc": path, "sr": path}``.

    Parameters are those of :func:`build_outputs`, plus ``output_dir`` (created
    when missing).

    Raises
    ------
    TypeError, ValueError
        As :func:`build_outputs`.
    OSError
        The folder or a file cannot be written.
    """
    built = build_outputs(source, probability, saliency, quality, summary, summary_source,
                          algorithm, threshold, uid_root)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return {kind.value: save_atomically(dataset, output_path(output_dir, source.dataset, kind))
            for kind, dataset in built.by_kind().items()}
