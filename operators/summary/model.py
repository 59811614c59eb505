"""The language model behind the note (llama-cpp-python), with the template as the fallback."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..scoring import QualityResult
from .classes import class_sentences
from .config import (
    DEFAULT_MODEL_PACKAGE,
    SOURCE_LLM,
    SOURCE_TEMPLATE,
    STYLE_GRAMMAR,
    STYLE_PLACEHOLDER,
    TEMPLATE_MODEL,
    Summary,
    SummaryConfig,
)
from .facts import template_summary
from .prompts import _EXAMPLES, build_prompt, clean_model_text, fact_grammar, fill_placeholders
from .validator import validate_summary

logger = logging.getLogger("xiqa.operators.summary")

@dataclass
class Generation:
    """One raw model call."""

    text: str
    tokens: int
    seconds: float
    timed_out: bool


@dataclass
class Summarizer:
    """Writes notes with a GGUF model, loaded once on first use; falls back to the template.

    Thread-safe: one ``Llama`` object serves all calls under a lock (llama.cpp
    contexts are not reentrant), which also keeps the cached prompt prefix warm.
    """

    config: SummaryConfig = field(default_factory=SummaryConfig)
    _llama: Any = field(default=None, init=False, repr=False)
    _load_error: str | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _load_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    load_seconds: float | None = field(default=None, init=False)

    @property
    def model_name(self) -> str:
        path = self.config.resolved_model_path()
        return path.name if path is not None else TEMPLATE_MODEL

    def load(self) -> bool:
        """Load the model if not done yet; False (with the reason kept) when it cannot be.

        With ``warm_up`` the fixed part of the prompt (system prompt and worked
        examples) is evaluated here, so that llama.cpp's prefix cache spares
        the first image that cost.
        """
        with self._load_lock:
            if self._llama is None and self._load_error is None:
                self._load()
        return self._llama is not None

    def _load(self) -> None:
        path = self.config.resolved_model_path()
        if path is None:
            self._load_error = f"no model: package {DEFAULT_MODEL_PACKAGE} is not installed"
        elif not path.is_file():
            self._load_error = f"model file not found: {path.name}"
        else:
            started = time.perf_counter()
            try:
                from llama_cpp import Llama  # heavy; only when a note is really generated

                self._llama = Llama(model_path=str(path), n_ctx=self.config.n_ctx,
                                    n_threads=self.config.threads(), seed=self.config.seed,
                                    verbose=False)
                if self.config.warm_up:
                    self.generate(build_prompt(_EXAMPLES[0], self.config.prompt_style),
                                  max_tokens=1)
            except Exception as error:  # noqa: BLE001 - any load failure means "use the template"
                self._llama = None
                self._load_error = f"model failed to load: {type(error).__name__}"
            self.load_seconds = time.perf_counter() - started
        if self._load_error:
            logger.warning("summary: %s; using the template", self._load_error)

    def generate(self, messages: list[dict[str, str]], grammar: str | None = None,
                 max_tokens: int | None = None) -> Generation:
        """One bounded chat completion; raises whatever llama-cpp raises."""
        from llama_cpp import LlamaGrammar

        config = self.config
        started = time.perf_counter()
        deadline = started + config.time_limit_s
        pieces: list[str] = []
        tokens, timed_out = 0, False
        with self._lock:
            stream = self._llama.create_chat_completion(
                messages=messages, max_tokens=max_tokens or config.max_tokens, temperature=config.temperature,
                top_p=config.top_p, repeat_penalty=config.repeat_penalty, seed=config.seed,
                grammar=LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
                stream=True)
            try:
                for chunk in stream:
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        pieces.append(delta)
                        tokens += 1
                    if time.perf_counter() > deadline:
                        timed_out = True
                        break
            finally:
                stream.close()  # stops llama.cpp at once when we leave early
        return Generation("".join(pieces), tokens, time.perf_counter() - started, timed_out)

    def summarize(self, quality: QualityResult) -> Summary:
        """The note for ``quality``: the model's text when it passes validation, else the template.

        Never raises for model problems (missing, failed load, error, timeout).
        """
        started = time.perf_counter()
        template = template_summary(quality)
        if not self.config.use_llm:
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL, None,
                           time.perf_counter() - started)
        if not self.load():
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL, self._load_error,
                           time.perf_counter() - started)
        style = self.config.prompt_style
        try:
            generation = self.generate(build_prompt(quality, style),
                                       fact_grammar(quality) if style == STYLE_GRAMMAR else None)
        except Exception as error:  # noqa: BLE001 - a failing model must not stop the image
            logger.warning("summary: model call failed (%s); using the template",
                           type(error).__name__)
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL,
                           f"model call failed: {type(error).__name__}",
                           time.perf_counter() - started)
        text = clean_model_text(generation.text)
        if style == STYLE_PLACEHOLDER:
            text = fill_placeholders(text, quality)
        text = " ".join([text, *class_sentences(quality)])  # the model writes only the core note
        if generation.timed_out:
            problems = [f"time limit of {self.config.time_limit_s:g} s reached"]
        else:
            problems = validate_summary(text, quality)
        seconds = time.perf_counter() - started
        if problems:
            # the reasons name only fact words, never the rejected text, so they are safe to log
            reason = "; ".join(problems[:5])
            logger.info("summary: model text rejected (%s); using the template", reason)
            return Summary(template, SOURCE_TEMPLATE, TEMPLATE_MODEL, reason, seconds,
                           generation.tokens)
        return Summary(text, SOURCE_LLM, self.model_name, None, seconds, generation.tokens)


def not_scored_summary(reason: str) -> Summary:
    """The fixed note for an image the gate did not let through (no model call: nothing to describe)."""
    text = (f"This image was not scored: {reason}. xiqa rates foreign objects on frontal (PA "
            "or AP) chest radiographs only; no quality verdict is given. Check the image and its tags, "
            "and send the frontal chest image for a quality score.")
    return Summary(text, SOURCE_TEMPLATE, TEMPLATE_MODEL, "not a frontal chest radiograph")
