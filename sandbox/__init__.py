"""The model zone: summary jobs from de-identified facts, every sentence verified.

A job (sandbox.runner.run_job) reads the patient's de-identified resources, lets the kind's
template (sandbox.templates) pick the facts (sandbox.facts), asks the model
(sandbox.llm.OpenAIChatModel, or the offline ExtractiveSummarizer) with the prompt of
docs/model-contract.md (sandbox.prompt), screens prompt and answer for identifiers
(sandbox.guard, sandbox.screen), and checks every sentence against the facts it cites
(sandbox.verifier); only verified sentences are handed back, for the identified zone to
check again and store. Imports nothing of the identified zone (import-linter contracts).
"""

from sandbox.answer import AnswerInvalid, Sentence, parse_answer
from sandbox.facts import Fact, facts_for
from sandbox.llm import ModelConfig, OpenAIChatModel, load_model
from sandbox.models import ExtractiveSummarizer, ModelError, ModelReply, SummaryModel
from sandbox.prompt import Prompt, build_prompt
from sandbox.runner import JobOutcome, JobResult, due_job_ids, requeue_stalled, run_job
from sandbox.templates import TEMPLATES, Template, template_for
from sandbox.verifier import VERIFIER, Failure, Report, verify, verify_stored

__all__ = [
    "TEMPLATES",
    "VERIFIER",
    "AnswerInvalid",
    "ExtractiveSummarizer",
    "Fact",
    "Failure",
    "JobOutcome",
    "JobResult",
    "ModelConfig",
    "ModelError",
    "ModelReply",
    "OpenAIChatModel",
    "Prompt",
    "Report",
    "Sentence",
    "SummaryModel",
    "Template",
    "build_prompt",
    "due_job_ids",
    "facts_for",
    "load_model",
    "parse_answer",
    "requeue_stalled",
    "run_job",
    "template_for",
    "verify",
    "verify_stored",
]
