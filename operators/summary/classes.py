"""The sentences a note adds once objects are classed, and their check against the findings.

DESIGN "Beyond the thesis", object classes: the note says what to take off (the removable
objects the verdict counts, by their finer category where the classifier named one) and which
medical devices (and, on a plate where the ECG rule expects them, ECG leads) were seen and do
not lower the score, and it names the rule that decided about the ECG leads.  These sentences
are made by code from the findings, never by the language model, and :func:`check_class_note`
holds a note's closing sentences to them word for word.
"""

from __future__ import annotations

import collections

from ..scoring import ObjectFinding, QualityResult

#: how a note names each finer category: (one, several)
CATEGORY_WORDS: dict[str, tuple[str, str]] = {
    "ecg_electrode": ("ECG electrode", "ECG electrodes"),
    "ecg_lead_wire": ("ECG lead", "ECG leads"),
    "jewellery_chain": ("necklace or chain", "necklaces or chains"),
    "button_snap": ("button or snap", "buttons or snaps"),
    "bra_hook_underwire": ("bra hook or underwire", "bra hooks or underwires"),
    "coin": ("coin", "coins"),
    "endotracheal_tube": ("endotracheal tube", "endotracheal tubes"),
    "nasogastric_tube": ("nasogastric tube", "nasogastric tubes"),
    "central_line": ("central line", "central lines"),
    "chest_drain": ("chest drain", "chest drains"),
    "pacemaker_can": ("pacemaker", "pacemakers"),
    "pacing_lead": ("pacing lead", "pacing leads"),
    "sternal_wire": ("sternal wire", "sternal wires"),
    "surgical_clip": ("surgical clip", "surgical clips"),
    "orthopaedic_hardware": ("orthopaedic implant", "orthopaedic implants"),
}
#: the words for an object whose finer category was not named, by class
UNNAMED_WORDS = {"removable": ("object of unknown kind", "objects of unknown kind"),
                 "device": ("medical device", "medical devices")}
_COUNTS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve")


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _words(finding: ObjectFinding) -> tuple[str, str]:
    if finding.category in CATEGORY_WORDS:
        return CATEGORY_WORDS[finding.category]
    return UNNAMED_WORDS[finding.object_class or "removable"]


def things_phrase(findings: tuple[ObjectFinding, ...]) -> str:
    """'an endotracheal tube, a central line and two ECG leads', in the order first seen."""
    counts = collections.Counter(_words(f) for f in findings)
    parts = []
    for (one, several), count in counts.items():
        if count == 1:
            parts.append(f"{_article(one)} {one}")
        else:
            parts.append(f"{_COUNTS[count] if count < len(_COUNTS) else count} {several}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def class_sentences(quality: QualityResult) -> list[str]:
    """The closing sentences of a note on classed objects (none before classes were set)."""
    if not quality.classified:
        return []
    sentences = []
    removable = tuple(sorted(quality.removable_objects, key=lambda f: f.severity, reverse=True))
    if removable:
        sentences.append(f"To take off: {things_phrase(removable)}.")
    expected = quality.devices + quality.expected_objects
    if expected:
        phrase = things_phrase(expected)
        verb = "counts too" if quality.count_devices else "does not lower the score"
        if len(expected) > 1:
            verb = "count too" if quality.count_devices else "do not lower the score"
        these = "it is" if len(expected) == 1 else "these are"
        where = "; the site counts medical devices" if quality.count_devices and quality.devices else ""
        sentences.append(f"{phrase[0].upper()}{phrase[1:]} seen; {these} expected and {verb}{where}.")
    if quality.ecg_rule:
        sentences.append(f"{quality.ecg_rule}.")
    return sentences


def class_note(quality: QualityResult) -> str:
    return " ".join(class_sentences(quality))


def split_class_note(text: str, quality: QualityResult) -> tuple[str, list[str]]:
    """(the note without its class sentences, problems): the class sentences must close the note
    word for word, and no device may be told to be taken off."""
    note = class_note(quality)
    if not note:
        return text, []
    stripped = text.rstrip()
    if not stripped.endswith(note):
        return stripped, ["the sentences on object classes are missing or changed"]
    core = stripped[: len(stripped) - len(note)].rstrip()
    return core, check_class_note(quality)


def check_class_note(quality: QualityResult) -> list[str]:
    """The class sentences against the findings: every named thing and count is a finding's."""
    problems = []
    removable = quality.removable_objects
    sentences = class_sentences(quality)
    take_off = [s for s in sentences if s.startswith("To take off:")]
    if bool(take_off) != bool(removable):
        problems.append("says what to take off, but no removable object counts" if take_off else
                        "does not say what to take off")
    for finding in quality.devices:
        one, several = _words(finding)
        if take_off and (f" {one}" in take_off[0] or f" {several}" in take_off[0]) and \
                not any(_words(r) == (one, several) for r in removable):
            problems.append(f"tells to take off a medical device ({one})")
    return problems
