"""The summary graph node."""

from __future__ import annotations

from dataclasses import replace

from monai.deploy.core import Fragment

from ..acquisition.sentences import with_acquisition_note
from ..case import Case, CaseOperator
from .config import Summary
from .model import Summarizer, not_scored_summary


def with_acquisition(summary: Summary, acquisition) -> Summary:
    """``summary`` with the sentences on failed acquisition checks closing it (code's own words,
    after the model's or the template's note; ``validate_summary(..., acquisition=)`` checks them)."""
    return replace(summary, text=with_acquisition_note(summary.text, acquisition))


class SummaryOperator(CaseOperator):
    """The app's summary node: named input and output ``case``; sets ``case.summary``.

    ``case.quality`` in, ``Summary`` out; a case that failed earlier passes untouched.
    """

    stage = "summary"

    def __init__(self, fragment: Fragment, *args, summarizer: Summarizer | None = None,
                 **kwargs) -> None:
        # one Summarizer for the whole run, so the model is loaded once for all images
        self.summarizer = summarizer if summarizer is not None else Summarizer()  # the template
        super().__init__(fragment, *args, **kwargs)

    def step(self, case: Case) -> None:
        if not case.frontal_chest:
            case.summary = not_scored_summary(case.gate.reason)
            return
        case.summary = with_acquisition(self.summarizer.summarize(case.quality), case.acquisition)
