"""Screening against known identifiers: the sandbox asks, the identified zone answers.

The pattern guard (``sandbox.guard``) finds identifier *shapes*; it cannot find a
patient's actual name, because the sandbox holds no identifier and no key to hash one
(with the key, stored tokens could be brute-forced back into names and phone numbers).
So the sandbox hands the text to a ``PromptScreen``, which the identified zone answers
(worker.screen) with a verdict only: "clean", "leak" or "refused". No kinds, no values:
and only a few screenings per job (``screen_max_per_job``), none after a "leak" (the job
has failed then), so the screen cannot be bisected into naming the patient's identifiers.

The sandbox never holds the screen's side: embedded, the request goes over the link to
`sidecar serve` (``LinkScreen``); in production it is the ``sidecar.screen`` Celery task
(``CeleryScreen``). It fails closed: no verdict raises ``ScreenUnavailable`` and the text
goes nowhere (the runner defers the job, then fails it with the reason).
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any, Protocol

from core.children import ChildLink
from core.tasks import SCREEN_QUEUE, SCREEN_TASK

__all__ = [
    "CeleryScreen",
    "KnownIdentifierLeak",
    "LinkScreen",
    "PromptScreen",
    "ScreenRefused",
    "ScreenUnavailable",
    "Stage",
    "Verdict",
    "require_clean",
]


class Stage(StrEnum):
    PROMPT = "prompt"  # before the text is sent to the model
    ANSWER = "answer"  # before the model's text is handed back


class Verdict(StrEnum):
    CLEAN = "clean"
    LEAK = "leak"  # the job has failed (the identified zone recorded why)
    REFUSED = "refused"  # not a running job, its screenings spent, or a leak before


class PromptScreen(Protocol):
    def __call__(self, job_id: int, text: str, stage: str) -> str:
        """The verdict on ``text`` of running job ``job_id`` (checked against the job's
        own patient). Raises ``ScreenUnavailable`` when no verdict can be had."""
        ...


class ScreenUnavailable(Exception):
    """No verdict (screen down, timed out): the text must not go on."""

    code = "screen-unavailable"


class ScreenRefused(Exception):
    """The identified zone will not screen for this job (any more): the job fails."""

    code = "screen-refused"


class KnownIdentifierLeak(Exception):
    """A known identifier of the patient is in the text; which, the sandbox is not told."""

    def __init__(self, stage: Stage) -> None:
        where = "prompt; not sent to the model" if stage == Stage.PROMPT else "model's answer; not stored"
        super().__init__(f"known identifier(s) of the patient in the {where}")
        self.code = "prompt-leak" if stage == Stage.PROMPT else "answer-leak"


def require_clean(screen: PromptScreen, job_id: int, text: str, stage: Stage) -> None:
    """Passes only on a verdict of "clean". Any failure of the screen is no verdict."""
    try:
        verdict: object = screen(job_id, text, str(stage))
    except ScreenUnavailable:
        raise
    except Exception as exc:
        raise ScreenUnavailable(f"screening gave no verdict ({type(exc).__name__})") from exc
    if verdict == Verdict.CLEAN:
        return
    if verdict == Verdict.LEAK:
        raise KnownIdentifierLeak(stage)
    if verdict == Verdict.REFUSED:
        raise ScreenRefused(f"the identified zone refused to screen the {stage} of this job")
    raise ScreenUnavailable("screening answered something that is not a verdict")


class LinkScreen:
    """Embedded: the request goes to `sidecar serve` over the sandbox process's link
    (core.children), which answers with worker.screen.ScreenService."""

    def __init__(self, link: ChildLink, timeout_s: float) -> None:
        self._link = link
        self._timeout_s = timeout_s

    def __call__(self, job_id: int, text: str, stage: str) -> str:
        try:
            answer = self._link.request(
                {"screen": {"job_id": job_id, "text": text, "stage": stage}}, self._timeout_s
            )
        except TimeoutError as exc:
            raise ScreenUnavailable(f"screening gave no verdict ({exc})") from exc
        if "verdict" not in answer:
            raise ScreenUnavailable(f"screening gave no verdict ({answer.get('error', 'no answer')})")
        return str(answer["verdict"])


class CeleryScreen:
    """Production: the ``sidecar.screen`` task, served by the identified-zone workers
    (``sidecar worker``) on its own queue, its answer back over rpc:// on RabbitMQ."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self._app = app  # a Celery app made with make_celery(..., results=True)
        self._timeout_s = timeout_s
        # One reply consumer per app: serialise requests rather than rely on Celery's
        # rpc backend being safe across the threads pool.
        self._lock = threading.Lock()

    def __call__(self, job_id: int, text: str, stage: str) -> str:
        with self._lock:
            try:
                result = self._app.send_task(
                    SCREEN_TASK,
                    kwargs={"job_id": job_id, "text": text, "stage": stage},
                    queue=SCREEN_QUEUE,
                    # A request nobody waits for any more is dropped, not screened late.
                    expires=self._timeout_s,
                )
                answer = result.get(timeout=self._timeout_s, disable_sync_subtasks=False)
            except Exception as exc:  # timeout, broker down, an error on the other side
                raise ScreenUnavailable(f"screening gave no verdict ({type(exc).__name__})") from exc
        return str(answer)
