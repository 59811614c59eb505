"""The summary's sentences on failed acquisition checks: what is wrong and what to correct.

Made by code from the check results, never by the language model; the summary validator holds
a note's closing sentences to :func:`acquisition_sentences` word for word
(:func:`split_acquisition_note`), so every number in them is a measured value.
"""

from __future__ import annotations

from .assess import AcquisitionResult
from .common import CheckResult

#: what to correct for each cut-off landmark
CUT_OFF_ADVICE = {"apex": "raise the upper collimator edge", "lateral edge": "open the collimator sideways",
                  "costophrenic angle": "lower the lower collimator edge"}
LEAD = "Acquisition check"
#: the foreign-object note's "accept" sentence, and what it becomes when a check asks for a repeat:
#: "accepted as it is" followed by "... and repeat" would contradict itself
ACCEPTED = "The image can be accepted as it is."
ACCEPTED_AS_TO_OBJECTS = "As to foreign objects, the image can be accepted."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cut_off(check: CheckResult) -> str:
    cut = check.findings["cut_off"]
    landmarks = _join([f"the {name}" for name in cut])
    verb = "is" if len(cut) == 1 else "are"
    advice = _join(list(dict.fromkeys(CUT_OFF_ADVICE[name.split(" ", 1)[1]] for name in cut)))
    return f"{LEAD}: {landmarks} {verb} cut off; {advice} and repeat."


def _rotation(check: CheckResult) -> str:
    return (f"{LEAD}: the patient is rotated (mediastinum {abs(check.value):.2f} of the half width towards "
            f"the patient's {check.findings['towards']}); square the shoulders to the detector and repeat.")


def _inspiration(check: CheckResult) -> str:
    return (f"{LEAD}: inspiration is shallow (lung height {check.value:.2f} of the thorax width); "
            f"repeat on full inspiration.")


def _exposure(check: CheckResult) -> str:
    problems = check.findings.get("problems", [])
    parts = []
    if "deviation index" in problems:
        parts.append(f"the deviation index is {check.findings['deviation_index']:.1f}")
    if "clipped lung" in problems:
        parts.append(f"{100 * check.findings['clipped_lung_fraction']:.0f}% of the lung area is clipped")
    return f"{LEAD}: exposure is off ({_join(parts)}); check the exposure settings and repeat."


def _collimation(check: CheckResult) -> str:
    return (f"{LEAD}: the collimation is too wide (field {check.value:.1f} times the lung fields); "
            f"collimate to the chest next time.")


WORDING = {"anatomy_cut_off": _cut_off, "rotation": _rotation, "inspiration": _inspiration,
           "exposure": _exposure, "collimation": _collimation}


def acquisition_sentences(result: AcquisitionResult | None) -> list[str]:
    """One sentence per failed check, in check order; none without a result."""
    if result is None:
        return []
    return [WORDING[check.check](check) for check in result.failed]


def acquisition_note(result: AcquisitionResult | None) -> str:
    return " ".join(acquisition_sentences(result))


def with_acquisition_note(text: str, result: AcquisitionResult | None) -> str:
    """``text`` (the foreign-object note) closed by the sentences on failed checks, its "accepted as
    it is" narrowed to foreign objects when there are any."""
    note = acquisition_note(result)
    return " ".join([text.replace(ACCEPTED, ACCEPTED_AS_TO_OBJECTS), note]) if note else text


def split_acquisition_note(text: str, result: AcquisitionResult | None) -> tuple[str, list[str]]:
    """(the foreign-object note as the summarizer wrote it, problems): the inverse of
    :func:`with_acquisition_note`; the sentences must close the note word for word, and no other
    sentence may speak of an acquisition check."""
    note = acquisition_note(result)
    stripped = text.rstrip()
    if not note:
        problems = [f'mentions "{LEAD}" but no acquisition check failed'] if LEAD in stripped else []
        return stripped, problems
    if not stripped.endswith(note):
        return stripped, ["the sentences on acquisition checks are missing or changed"]
    core = stripped[: len(stripped) - len(note)].rstrip().replace(ACCEPTED_AS_TO_OBJECTS, ACCEPTED)
    problems = [f'mentions "{LEAD}" outside its sentences'] if LEAD in core else []
    return core, problems
