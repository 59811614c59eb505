"""The xiqa MONAI Deploy application: the graph every entry point runs.

    loader -> preprocess -> segmentation -> saliency -> scoring -> summary -> report -> collect

Each arrow carries one ``Case`` on the ``case`` port.  ``xiqa analyze``, the MAP
entry point (``python -m xiqa``) and the service build this Application with
``RunSettings`` and read the processed cases back from ``app.cases``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from xiqa.operators.case import CASE_PORT, Case, CollectOperator
from xiqa.operators.loader import LoaderConfig, LoaderOperator
from xiqa.operators.preprocess import PreprocessConfig, PreprocessOperator
from xiqa.operators.report import ReportOperator
from xiqa.operators.scoring import ScoringConfig, ScoringOperator
from xiqa.operators.segmentation import SegmentationModel, SegmentationOperator


@dataclass
class RunSettings:
    """Everything one run of the graph needs; the models are loaded once by the caller."""

    paths: list[Path]
    output: Path
    model: SegmentationModel
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)


class XiqaApp(Application):
    """Chest X-ray quality: foreign objects, saliency, Q_img, summary, DICOM outputs."""

    def __init__(self, settings: RunSettings, on_case=None, *args, **kwargs) -> None:
        self.settings = settings
        self.cases: list[Case] = []
        self._on_case = on_case
        super().__init__(*args, **kwargs)

    def _collect(self, case: Case) -> None:
        self.cases.append(case)
        if self._on_case is not None:
            self._on_case(case)

    def compose(self) -> None:
        settings = self.settings
        loader = LoaderOperator(self, CountCondition(self, len(settings.paths)), paths=settings.paths,
                                config=settings.loader, name="loader")
        preprocess = PreprocessOperator(self, config=settings.preprocess, name="preprocess")
        segmentation = SegmentationOperator(self, model=settings.model, name="segmentation")
        scoring = ScoringOperator(self, config=settings.scoring, name="scoring")
        report = ReportOperator(self, output=settings.output, name="report")
        collect = CollectOperator(self, on_case=self._collect, name="collect")

        self.add_flow(loader, preprocess, {(CASE_PORT, CASE_PORT)})
        self.add_flow(preprocess, segmentation, {(CASE_PORT, CASE_PORT)})
        self.add_flow(segmentation, scoring, {(CASE_PORT, CASE_PORT)})
        self.add_flow(scoring, report, {(CASE_PORT, CASE_PORT)})
        self.add_flow(report, collect, {(CASE_PORT, CASE_PORT)})


def run_graph(settings: RunSettings, on_case=None) -> list[Case]:
    """Build and run the Application once over ``settings.paths``; the cases in input order."""
    if not settings.paths:
        return []
    app = XiqaApp(settings, on_case=on_case)
    app.run()
    return app.cases
