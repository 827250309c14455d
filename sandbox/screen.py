"""Screening against known identifiers: the sandbox asks, the identified zone answers.

The pattern guard (``sandbox.guard``) finds identifier *shapes*; it cannot find a
patient's actual name, because the sandbox holds no identifier and no key to hash one
(with the key, stored tokens could be brute-forced back into names and phone numbers).
So the sandbox hands the text to a ``PromptScreen``; the identified zone, which keeps
the patient's keyed identifier tokens, answers with the *kinds* it found (NAME, ID,
PHONE...), never values or tokens, and audits the request.

The interface is narrow on purpose: one job, its patient, one text, one answer of kinds.
It fails closed: a screen that cannot answer raises ``ScreenUnavailable`` and the text
goes nowhere (the runner defers the job, then fails it with the reason).
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any, Protocol

from core.tasks import SCREEN_QUEUE, SCREEN_TASK


class Stage(StrEnum):
    PROMPT = "prompt"  # before the text is sent to the model
    ANSWER = "answer"  # before the model's text is stored


class PromptScreen(Protocol):
    def __call__(self, job_id: int, patient: str, text: str, stage: str) -> list[str]:
        """Kinds of ``patient``'s known identifiers in ``text`` (empty: clean).
        Raises ``ScreenUnavailable`` when no verdict can be had."""
        ...


class ScreenUnavailable(Exception):
    """No verdict (screen down, timed out, refused): the text must not go on."""

    code = "screen-unavailable"


class KnownIdentifierLeak(Exception):
    """Raised with the kinds found, never the matched text."""

    def __init__(self, stage: Stage, kinds: list[str]) -> None:
        where = "prompt; not sent to the model" if stage == Stage.PROMPT else "model's answer; not stored"
        super().__init__(f"known identifier(s) of the patient in the {where}: {', '.join(kinds)}")
        self.code = "prompt-leak" if stage == Stage.PROMPT else "answer-leak"
        self.kinds = kinds


def require_clean(screen: PromptScreen, job_id: int, patient: str, text: str, stage: Stage) -> None:
    """Passes only on a verdict of "clean". Any failure of the screen (the in-process one
    raises the identified zone's own errors, which the sandbox cannot name) is no verdict."""
    try:
        kinds: object = screen(job_id, patient, text, str(stage))
    except ScreenUnavailable:
        raise
    except Exception as exc:
        raise ScreenUnavailable(f"screening gave no verdict ({type(exc).__name__})") from exc
    if not isinstance(kinds, list) or not all(isinstance(kind, str) for kind in kinds):
        raise ScreenUnavailable("screening answered something that is not a list of kinds")
    if kinds:
        raise KnownIdentifierLeak(stage, kinds)


class CeleryScreen:
    """Production: the ``sidecar.screen`` task, served by the identified-zone workers
    (``sidecar worker``) on its own queue, its answer back over rpc:// on RabbitMQ."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self._app = app  # a Celery app made with make_celery(..., results=True)
        self._timeout_s = timeout_s
        # One reply consumer per app: serialise requests rather than rely on Celery's
        # rpc backend being safe across the threads pool.
        self._lock = threading.Lock()

    def __call__(self, job_id: int, patient: str, text: str, stage: str) -> list[str]:
        with self._lock:
            try:
                result = self._app.send_task(
                    SCREEN_TASK,
                    kwargs={"job_id": job_id, "patient": patient, "text": text, "stage": stage},
                    queue=SCREEN_QUEUE,
                    # A request nobody waits for any more is dropped, not screened late.
                    expires=self._timeout_s,
                )
                answer = result.get(timeout=self._timeout_s, disable_sync_subtasks=False)
            except Exception as exc:  # timeout, broker down, refusal on the other side
                raise ScreenUnavailable(f"screening gave no verdict ({type(exc).__name__})") from exc
        return answer  # type: ignore[no-any-return]  # checked by require_clean
