"""Model clients behind one protocol: a prompt in, the model's reply out.

The embedded default is an offline, deterministic, extractive summariser: it writes one
sentence per fact it picks, citing that fact, so it needs no network and never invents.
Any OpenAI-compatible server (vLLM, Ollama, Xinference, llama.cpp) is reached through
``sandbox.llm.OpenAIChatModel`` when ``model_base_url`` is set. Either way the reply is
only text until ``sandbox.answer`` parses it and ``sandbox.verifier`` checks it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sandbox.answer import Sentence
from sandbox.verifier import verify

if TYPE_CHECKING:
    from sandbox.prompt import Prompt

__all__ = [
    "ExtractiveSummarizer",
    "ModelError",
    "ModelReply",
    "ModelUnavailable",
    "ReplyRefused",
    "SummaryModel",
    "load_factory",
]


@dataclass(frozen=True)
class ModelReply:
    """What a model answered, with what the Provenance and the audit log record of it."""

    content: str  # the answer's text, reasoning (<think> blocks) already stripped
    model: str  # the model id the server says served the request
    response_id: str | None = None
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens, ...
    finish_reason: str | None = None


class SummaryModel(Protocol):
    name: str  # what the operator configured (model_name), or the built-in's name
    version: str

    def answer(self, prompt: Prompt) -> ModelReply: ...


class ModelError(Exception):
    """The model gave no usable reply; ``code`` goes to the dead letter and the audit log."""

    code = "model-error"


class ModelUnavailable(ModelError):
    """No reply after the bounded retries (timeouts, 429, 5xx, connection refused)."""

    code = "model-unavailable"


class ReplyRefused(ModelError):
    """A reply that must not be used: cut at the token limit, empty, refused by the server."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class ExtractiveSummarizer:
    """One sentence per fact, in the prompt's order (abnormal first), each citing its fact.

    The sentence is the fact's own text, so it passes the verifier by construction: this is
    the embedded default's floor, not a model."""

    name = "sidecar-extractive"
    version = "2.0"

    def __init__(self, max_sentences: int = 12) -> None:
        self.max_sentences = max_sentences

    def answer(self, prompt: Prompt) -> ModelReply:
        # A fact whose line says nothing checkable ("Patient: other") makes no sentence.
        usable = [f for f in prompt.facts if verify([Sentence(f.text, (f.id,))], [f]).ok or f.abnormal]
        chosen = [f for f in usable if f.abnormal]
        chosen += [f for f in usable if not f.abnormal][: max(0, self.max_sentences - len(chosen))]
        sentences = [{"text": fact.text, "facts": [fact.id]} for fact in chosen]
        return ModelReply(
            content=json.dumps({"sentences": sentences}, ensure_ascii=False),
            model=f"{self.name}-{self.version}",
            finish_reason="stop",
        )


def load_factory(spec: str) -> SummaryModel:
    """A model named "package.module:factory" (a class or function called with no
    arguments): the ``sandbox_model`` setting, for models that speak no HTTP."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"sandbox_model must be 'module:factory', not {spec!r}")
    factory = getattr(importlib.import_module(module_name), attribute)
    model: SummaryModel = factory()
    return model
