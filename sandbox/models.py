"""Model clients. The embedded default is an offline, deterministic, extractive
summariser: it picks facts from the prompt, so it needs no network and never invents.
An OpenAI-compatible HTTP client slots in behind the same protocol."""

from __future__ import annotations

import importlib
from typing import Protocol

from sandbox.prompt import Prompt

__all__ = ["ExtractiveSummarizer", "SummaryModel", "load_model"]


class SummaryModel(Protocol):
    name: str
    version: str

    def summarize(self, prompt: Prompt) -> str: ...


class ExtractiveSummarizer:
    name = "sidecar-extractive"
    version = "1.0"

    def __init__(self, max_lines: int = 8) -> None:
        self.max_lines = max_lines

    def summarize(self, prompt: Prompt) -> str:
        # The prompt is already ordered by relevance (abnormal first); extraction is a cut.
        lines = list(prompt.facts[: self.max_lines])
        if len(prompt.facts) > len(lines):
            lines.append("(further facts are in the record)")
        return "\n".join(lines)


def load_model(spec: str | None) -> SummaryModel:
    """The model named by the ``sandbox_model`` setting, "package.module:factory" (a class
    or function called with no arguments); None: the extractive default."""
    if not spec:
        return ExtractiveSummarizer()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"sandbox_model must be 'module:factory', not {spec!r}")
    factory = getattr(importlib.import_module(module_name), attribute)
    model: SummaryModel = factory()
    return model
