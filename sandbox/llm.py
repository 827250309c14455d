"""An OpenAI-compatible chat-completions client: any hospital's own model server (vLLM,
Ollama, Xinference, llama.cpp) behind ``SummaryModel``.

Built on httpx rather than the ``openai`` SDK because the sandbox needs what the SDK hides:
a transport that refuses every destination but the model host before a connection is made
(no proxy from the environment, no redirect followed), raw access to ``finish_reason`` and
``reasoning_content``, the ``response_format`` fallback from ``json_schema`` to
``json_object`` for servers without schema support, and one bounded retry loop of our own
(the SDK brings its own retries and reads proxies from the environment).

The request: the prompt's messages, temperature 0, the configured seed and token limit, and
the answer's JSON Schema as ``response_format``. Retried (with exponential back-off and
jitter, honouring ``Retry-After``) only on 429, 5xx, timeouts and connection errors;
refused at once on any other 4xx, a redirect, an answer cut at the token limit, a reply
that is not the API's JSON, or nothing left once the reasoning is stripped. Logs carry
status codes, timings and counts only, never the prompt or the answer.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from sandbox.models import (
    ExtractiveSummarizer,
    ModelError,
    ModelReply,
    ModelUnavailable,
    ReplyRefused,
    SummaryModel,
    load_factory,
)
from sandbox.prompt import Prompt

__all__ = [
    "DestinationRefused",
    "LockedTransport",
    "ModelConfig",
    "OpenAIChatModel",
    "load_model",
    "strip_reasoning",
]

log = logging.getLogger("sidecar.sandbox.llm")

# A chat completion of a few thousand tokens is a few tens of KiB; more is not an answer.
MAX_REPLY_BYTES = 4 * 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Statuses a json_schema request may be refused with that say nothing about the schema:
# the fallback to json_object would meet them again.
_NOT_A_SCHEMA_REFUSAL = frozenset({401, 403, 404, 429})

_PAIRED_REASONING = re.compile(r"<(think|thinking)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_UNOPENED_REASONING = re.compile(r"\A.*</(?:think|thinking)\s*>", re.IGNORECASE | re.DOTALL)
_UNCLOSED_REASONING = re.compile(r"<(?:think|thinking)\b[^>]*>.*\Z", re.IGNORECASE | re.DOTALL)


class DestinationRefused(ModelError):
    """A request for anywhere but the configured model host: refused before connecting."""

    code = "model-destination"


@dataclass(frozen=True)
class ModelConfig:
    """What the sandbox needs to reach the model server; plain values, so it pickles into
    the model zone's process (the API key travels here, never in its environment)."""

    base_url: str  # e.g. http://10.0.8.5:8000/v1; requests go to {base_url}/chat/completions
    name: str = "default"
    api_key: str | None = field(default=None, repr=False)  # kept out of reprs and tracebacks
    timeout_s: float = 120.0
    max_tokens: int = 1024
    max_retries: int = 2
    seed: int = 0
    version: str | None = None  # model_version: the weights' version, for the Device
    weights_digest: str | None = None
    backoff_s: float = 0.5  # first retry's delay before jitter; doubles on each retry
    backoff_max_s: float = 30.0  # cap of one delay, Retry-After included

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ValueError(f"model_base_url must be an http(s) URL with a host, not {self.base_url!r}")
        if url.query or url.fragment:
            raise ValueError("model_base_url must have no query or fragment")
        if self.timeout_s <= 0 or self.max_tokens <= 0 or self.max_retries < 0:
            raise ValueError("model timeout and max_tokens must be positive, max_retries not negative")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("model back-off delays must not be negative")

    @property
    def endpoint(self) -> httpx.URL:
        return httpx.URL(self.base_url.rstrip("/") + "/chat/completions")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme)


class LockedTransport(httpx.BaseTransport):
    """Hands a request on only if it goes to the one allowed origin (scheme, host, port)."""

    def __init__(self, allowed: httpx.URL, inner: httpx.BaseTransport) -> None:
        self._allowed = _origin(allowed)
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if _origin(request.url) != self._allowed:
            raise DestinationRefused(
                f"the sandbox may reach only the model host, not {request.url.scheme}://"
                f"{request.url.host}:{request.url.port or _DEFAULT_PORTS.get(request.url.scheme)}"
            )
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def strip_reasoning(content: str) -> str:
    """The answer without the model's reasoning: ``<think>``/``<thinking>`` blocks, what
    precedes a closing tag whose opening tag the chat template already sent (DeepSeek-R1
    distills), and an unclosed block to the end (reasoning cut short)."""
    text = _PAIRED_REASONING.sub("", content)
    text = _UNOPENED_REASONING.sub("", text)
    text = _UNCLOSED_REASONING.sub("", text)
    return text.strip()


class _Retryable(Exception):
    """One failed attempt worth another: ``reason`` names it (status or exception class)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _ServerRefused(ReplyRefused):
    def __init__(self, status: int) -> None:
        super().__init__("model-refused", f"the model server refused the request: HTTP {status}")
        self.status = status


_SCHEMA_WORDS = re.compile(rb"json_schema|response_format", re.IGNORECASE)


def _schema_request(body: dict[str, Any]) -> bool:
    return bool(body.get("response_format", {}).get("type") == "json_schema")


def _names_the_schema(response: httpx.Response) -> bool:
    """Does a server error's body blame the response format? Read at most 8 KiB of it."""
    seen = b""
    for chunk in response.iter_bytes():
        seen += chunk
        if len(seen) >= 8192:
            break
    return bool(_SCHEMA_WORDS.search(seen[:8192]))


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class OpenAIChatModel:
    """``SummaryModel`` over ``POST {base_url}/chat/completions``.

    ``sleep`` and ``rng`` are the back-off's clock and jitter (tests pass their own).
    Thread-safe; the HTTP client is made per process, so a Celery prefork worker's
    children never share the parent's connections."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version or "openai-chat"
        self.weights_digest = config.weights_digest
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._endpoint = config.endpoint
        # Set once a server refused json_schema and took json_object: asked that way from then on.
        self.json_object_only = False
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._client_pid = 0

    @property
    def http(self) -> httpx.Client:
        """The locked HTTP client: every request it sends passes ``LockedTransport``."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = httpx.Client(
                    transport=LockedTransport(
                        self._endpoint, httpx.HTTPTransport(retries=0, trust_env=False)
                    ),
                    timeout=httpx.Timeout(self.config.timeout_s),
                    follow_redirects=False,
                    trust_env=False,
                )
                self._client_pid = os.getpid()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._client_pid == os.getpid():
                self._client.close()
            self._client = None

    def __enter__(self) -> OpenAIChatModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def answer(self, prompt: Prompt) -> ModelReply:
        if self.json_object_only:
            return self._complete(prompt, self._json_object(prompt))
        try:
            return self._complete(prompt, self._json_schema(prompt))
        except _ServerRefused as refused:
            # Servers word a schema refusal each their own way (a pydantic 422 listing the
            # allowed types, a 400 "grammar not supported", a bare 400), so any 4xx but
            # auth, not-found and rate limit gets one json_object try; it is remembered only
            # if accepted, so a request-specific 400 (prompt too long) changes nothing.
            if refused.status in _NOT_A_SCHEMA_REFUSAL:
                raise
            log.info("model server refused json_schema; trying json_object", extra={"status": refused.status})
            reply = self._complete(prompt, self._json_object(prompt))
            self.json_object_only = True
            return reply

    @staticmethod
    def _json_schema(prompt: Prompt) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {"name": "summary", "strict": True, "schema": prompt.schema},
        }

    @staticmethod
    def _json_object(prompt: Prompt) -> dict[str, Any]:
        # llama.cpp's servers constrain generation by a "schema" given here; others ignore it.
        return {"type": "json_object", "schema": prompt.schema}

    def _body(self, prompt: Prompt, response_format: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.config.name,
            "messages": prompt.messages,
            "temperature": 0,
            "seed": self.config.seed,
            "max_tokens": self.config.max_tokens,
            "response_format": response_format,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _complete(self, prompt: Prompt, response_format: dict[str, Any]) -> ModelReply:
        body = self._body(prompt, response_format)
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(body)
            except _Retryable as failed:
                if attempt + 1 == attempts:
                    log.warning(
                        "model server unavailable", extra={"attempts": attempts, "reason": failed.reason}
                    )
                    raise ModelUnavailable(
                        f"no reply from the model server after {attempts} attempts; last: {failed.reason}"
                    ) from None
                delay = self._delay(attempt, failed.retry_after_s)
                log.info(
                    "model request retried",
                    extra={"attempt": attempt + 1, "reason": failed.reason, "delay_s": round(delay, 3)},
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        cap = self.config.backoff_max_s
        if retry_after_s is not None:
            return min(cap, retry_after_s)
        # Jitter spreads the retries of several sandboxes that failed together.
        return min(cap, self.config.backoff_s * 2.0**attempt) * self._rng.uniform(0.5, 1.0)

    def _attempt(self, body: dict[str, Any]) -> ModelReply:
        started = time.monotonic()
        deadline = started + self.config.timeout_s
        try:
            with self.http.stream("POST", self._endpoint, json=body, headers=self._headers()) as response:
                status = response.status_code
                if status >= 500 and _schema_request(body) and _names_the_schema(response):
                    # llama-cpp-python's server answers json_schema with a 500 that says so.
                    raise _ServerRefused(status)
                if status == 429 or status >= 500:
                    raise _Retryable(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
                if 300 <= status < 400:
                    raise ReplyRefused(
                        "model-redirect",
                        f"the model server answered a redirect (HTTP {status}); not followed",
                    )
                if status >= 400:
                    raise _ServerRefused(status)
                if status != 200:
                    raise ReplyRefused("model-bad-reply", f"the model server answered HTTP {status}, not 200")
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_REPLY_BYTES:
                        raise ReplyRefused(
                            "model-bad-reply", f"the reply is larger than {MAX_REPLY_BYTES} bytes"
                        )
                    # The read timeout is per chunk; a server trickling bytes meets this one.
                    if time.monotonic() > deadline:
                        raise _Retryable("deadline")
        except httpx.TimeoutException as error:
            raise _Retryable(type(error).__name__) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise _Retryable(type(error).__name__) from None
        log.info(
            "model replied",
            extra={
                "status": status,
                "elapsed_ms": round((time.monotonic() - started) * 1000),
                "bytes": len(raw),
            },
        )
        return self._reply(bytes(raw))

    def _reply(self, raw: bytes) -> ModelReply:
        try:
            data = json.loads(raw)
        except ValueError:
            raise ReplyRefused("model-bad-reply", "the model server's reply is not JSON") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(message, dict):
            raise ReplyRefused("model-bad-reply", "the model server's reply has no choices[0].message")
        finish_reason = choice.get("finish_reason")
        if finish_reason == "length":
            raise ReplyRefused(
                "model-truncated", f"the answer was cut at the token limit ({self.config.max_tokens})"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ReplyRefused("model-bad-reply", "the reply's message content is not text")
        # reasoning_content is the server's split-off reasoning: never part of the answer.
        text = strip_reasoning(content or "")
        if not text:
            raise ReplyRefused("model-empty", "the model's answer is empty once its reasoning is stripped")
        usage = data.get("usage")
        served = data.get("model")
        response_id = data.get("id")
        return ModelReply(
            content=text,
            model=served if isinstance(served, str) and served else self.config.name,
            response_id=response_id if isinstance(response_id, str) else None,
            usage={
                key: value
                for key, value in (usage.items() if isinstance(usage, dict) else ())
                if isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool)
            },
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        )


def load_model(config: ModelConfig | None, factory: str | None = None) -> SummaryModel:
    """The sandbox's model: the OpenAI-compatible server when ``model_base_url`` is set
    (``config``), else the ``sandbox_model`` factory ("module:factory"), else the offline
    extractive summariser."""
    if config is not None:
        return OpenAIChatModel(config)
    if factory:
        return load_factory(factory)
    return ExtractiveSummarizer()
