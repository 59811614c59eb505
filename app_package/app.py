"""The xiqa MONAI Deploy application: the graph every entry point runs.

    loader -> preprocess -> gate -> acquisition -> segmentation -> saliency -> scoring -> object_classes
           -> summary -> seg_writer -> sc_writer -> sr_writer -> kos_writer -> report -> collect

The gate lets only frontal chest radiographs through to the analysis nodes; the others go on
to the SR and the report with the reason and no verdict.  The acquisition checks (cut-off,
rotation, inspiration, exposure, collimation) run on the gate's lung fields.  The KOS writer writes
only where ``RunSettings.reject_kos`` is set and the overall verdict is Poor.

Each arrow carries one ``Case`` on the ``case`` port.  ``xiqa analyze``, the MAP
entry point (``python -m xiqa``) and the benchmarks build ``RunSettings`` with
``build_settings`` (models loaded once) and run this Application once over their
paths (``run_graph``); the processed cases come back from ``app.cases``.  ``xiqa
serve`` keeps the same Application running (``RunningGraph``) and feeds it path
after path, so no study pays the framework's start and teardown.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from holoscan.conditions import AsynchronousCondition
from monai.deploy.core import Application
from xiqa.operators.acquisition import AcquisitionConfig
from xiqa.operators.acquisition.node import AcquisitionOperator
from xiqa.operators.case import CASE_PORT, Case, CollectOperator
from xiqa.operators.gate import GateConfig, GateOperator
from xiqa.operators.kos_writer import KosWriterOperator
from xiqa.operators.loader import LoaderConfig, LoaderOperator, PathFeed
from xiqa.operators.object_classes import ClassConfig, ObjectClassifier, ObjectClassOperator
from xiqa.operators.preprocess import PreprocessConfig, PreprocessOperator
from xiqa.operators.report import ReportOperator
from xiqa.operators.saliency import SaliencyConfig, SaliencyOperator
from xiqa.operators.sc_writer import DEFAULT_COMPRESSION, ScCompression, ScWriterOperator
from xiqa.operators.scoring import ScoringConfig, ScoringOperator
from xiqa.operators.seg_writer import SegWriterOperator
from xiqa.operators.segmentation import SegmentationModel, SegmentationOperator
from xiqa.operators.sr_writer import SrWriterOperator
from xiqa.operators.summary import Summarizer, SummaryConfig, SummaryOperator

logger = logging.getLogger(__name__)


@dataclass
class RunSettings:
    """Everything one run of the graph needs; models are loaded once, before the run."""

    paths: list[Path]
    output: Path
    model: SegmentationModel
    summarizer: Summarizer
    classifier: ObjectClassifier
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    sc_compression: ScCompression = DEFAULT_COMPRESSION
    classes: ClassConfig = field(default_factory=ClassConfig)
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    #: also write a Key Object Selection "Rejected for Quality Reasons" for a Poor image
    reject_kos: bool = False


def build_settings(paths: list[Path], output: Path, *, model: Path | SegmentationModel | None = None,
                   summarizer: Summarizer | None = None, device: str = "auto", saliency: str = "gradcam",
                   loader: LoaderConfig | None = None, summary_model: Path | None = None,
                   count_devices: bool = False,
                   acquisition: AcquisitionConfig | None = None, reject_kos: bool = False) -> RunSettings:
    """Settings with the segmentation model (a bundle path, default: ``default_model()``) and the
    summarizer loaded.

    The summary is the template unless ``summary_model`` names a GGUF, which then phrases it
    (its text is used only when it passes ``validate_summary``).  ``count_devices``: medical
    devices lower the default verdict too (by default it follows the removable objects only).
    ``acquisition``: the acquisition checks' thresholds and how failures combine with the verdict.
    ``reject_kos``: a Poor image also gets a Key Object Selection "Rejected for Quality Reasons".
    """
    from xiqa.operators.object_classes import load_classifier
    from xiqa.operators.segmentation import default_model, load_segmentation_model

    if not isinstance(model, SegmentationModel):
        model = load_segmentation_model(model or default_model(), device=device)
    if summarizer is None:
        summarizer = Summarizer(SummaryConfig(model_path=summary_model, use_llm=summary_model is not None))
    if summarizer.config.use_llm:
        summarizer.load()  # once, before the graph starts; a failure falls back to the template
    return RunSettings(paths=list(paths), output=Path(output), model=model, summarizer=summarizer,
                       classifier=load_classifier(), loader=loader or LoaderConfig(),
                       saliency=SaliencyConfig(method=saliency),
                       classes=ClassConfig(count_devices=count_devices),
                       acquisition=acquisition or AcquisitionConfig(), reject_kos=reject_kos)


class XiqaApp(Application):
    """Chest X-ray quality: foreign objects, saliency, Q_img, summary, DICOM outputs."""

    def __init__(self, settings: RunSettings, on_case: Callable[[Case], None] | None = None,
                 *args, feed: PathFeed | None = None, keep_cases: bool = True, **kwargs) -> None:
        """``feed``: where the loader takes its paths; default ``settings.paths``, then the graph ends.
        ``keep_cases=False`` leaves the cases to ``on_case`` alone: a graph that runs for days must
        not hold every image it has seen."""
        self.settings = settings
        self.feed = feed if feed is not None else PathFeed(settings.paths, closed=True)
        self.cases: list[Case] = []
        self._keep_cases = keep_cases
        self._on_case = on_case
        super().__init__(*args, **kwargs)

    def _collect(self, case: Case) -> None:
        if self._keep_cases:
            self.cases.append(case)
        if self._on_case is not None:
            self._on_case(case)

    def compose(self) -> None:
        settings = self.settings
        loader = LoaderOperator(self, AsynchronousCondition(self, name="feed"), feed=self.feed,
                                config=settings.loader, name="loader")
        preprocess = PreprocessOperator(self, config=settings.preprocess, name="preprocess")
        gate = GateOperator(self, config=settings.gate, name="gate")
        acquisition = AcquisitionOperator(self, config=settings.acquisition, name="acquisition")
        segmentation = SegmentationOperator(self, model=settings.model, name="segmentation")
        saliency = SaliencyOperator(self, model=settings.model, config=settings.saliency, name="saliency")
        scoring = ScoringOperator(self, config=settings.scoring, name="scoring")
        object_classes = ObjectClassOperator(self, classifier=settings.classifier, config=settings.classes,
                                             scoring=settings.scoring, name="object_classes")
        summary = SummaryOperator(self, summarizer=settings.summarizer, name="summary")
        seg_writer = SegWriterOperator(self, output=settings.output, name="seg_writer")
        sc_writer = ScWriterOperator(self, output=settings.output, compression=settings.sc_compression,
                                     name="sc_writer")
        sr_writer = SrWriterOperator(self, output=settings.output, name="sr_writer")
        kos_writer = KosWriterOperator(self, output=settings.output, enabled=settings.reject_kos,
                                       name="kos_writer")
        report = ReportOperator(self, output=settings.output, name="report")
        collect = CollectOperator(self, on_case=self._collect, name="collect")

        self.add_flow(loader, preprocess, {(CASE_PORT, CASE_PORT)})
        self.add_flow(preprocess, gate, {(CASE_PORT, CASE_PORT)})
        self.add_flow(gate, acquisition, {(CASE_PORT, CASE_PORT)})
        self.add_flow(acquisition, segmentation, {(CASE_PORT, CASE_PORT)})
        self.add_flow(segmentation, saliency, {(CASE_PORT, CASE_PORT)})
        self.add_flow(saliency, scoring, {(CASE_PORT, CASE_PORT)})
        self.add_flow(scoring, object_classes, {(CASE_PORT, CASE_PORT)})
        self.add_flow(object_classes, summary, {(CASE_PORT, CASE_PORT)})
        self.add_flow(summary, seg_writer, {(CASE_PORT, CASE_PORT)})
        self.add_flow(seg_writer, sc_writer, {(CASE_PORT, CASE_PORT)})
        self.add_flow(sc_writer, sr_writer, {(CASE_PORT, CASE_PORT)})
        self.add_flow(sr_writer, kos_writer, {(CASE_PORT, CASE_PORT)})
        self.add_flow(kos_writer, report, {(CASE_PORT, CASE_PORT)})
        self.add_flow(report, collect, {(CASE_PORT, CASE_PORT)})


def run_graph(settings: RunSettings, on_case: Callable[[Case], None] | None = None,
              keep_cases: bool = True) -> list[Case]:
    """Build and run the Application once over ``settings.paths``; the cases in input order (none
    with ``keep_cases=False``: a long batch must not hold every image's pixels and maps)."""
    if not settings.paths:
        return []
    app = XiqaApp(settings, on_case=on_case, keep_cases=keep_cases)
    app.run()
    return app.cases


class RunningGraph:
    """One ``XiqaApp`` that keeps running in a thread of its own over an open ``PathFeed``.

    ``submit`` puts a path in; its case comes back to ``on_case`` in the graph's thread.  The
    graph ends after ``close`` (once the waiting paths are through) or when a node fails outside a
    case's isolation (``alive`` turns False, ``error`` says why).  The thread starts with SIGTERM
    and SIGINT blocked, so Holoscan's threads never take a signal meant for the caller's handlers.
    """

    def __init__(self, settings: RunSettings, on_case: Callable[[Case], None]) -> None:
        self.feed = PathFeed()
        self.app = XiqaApp(settings, on_case=on_case, feed=self.feed, keep_cases=False)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xiqa-graph", daemon=True)
        self.ended = threading.Event()

    def start(self) -> RunningGraph:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
        try:
            self._thread.start()  # inherits the blocked mask
            # Holoscan installs its signal handlers as it starts: the caller puts its own back after
            while not (self.feed.bound.wait(0.1) or self.ended.is_set()):
                pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return self

    def _run(self) -> None:
        try:
            self.app.run()
        except BaseException as error:  # noqa: BLE001 - reported through alive/error, never lost
            self.error = error
            logger.debug("the running graph failed", exc_info=True)
        finally:
            self.ended.set()

    @property
    def alive(self) -> bool:
        return not self.ended.is_set()

    def submit(self, path: Path) -> None:
        self.feed.put(path)

    def close(self, timeout: float | None = None) -> None:
        """Let the graph finish what it was given and end; wait up to ``timeout`` seconds."""
        self.feed.close()
        self.ended.wait(timeout)
