"""An embedded sidecar that API clients, the pipeline, the model zone and an operator have
touched, for the auditors' tests: clients ``alpha`` (purpose TREAT) and ``beta`` (the
default purpose), the auditor client ``auditor``, operator ``dr-audit`` for `reid`."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import func, select

from bench.e2e_messages import message
from core.tables import Job, JobStatus, Resource
from tests.deployments import Embedded, wait_for

OPERATOR = "dr-audit"


def audited_sidecar(
    data_dir: Path, tokens: dict[str, str], *, run: str, patients: int, messages: int
) -> Embedded:
    """Started, fed ``messages`` ORU/ADT messages for ``patients`` patients over MLLP, and
    waited for until every patient's summary is stored. The caller stops it."""
    dep = Embedded(
        data_dir,
        api_port=0,
        api_tokens={name: SecretStr(t) for name, t in tokens.items()},
        api_auditors=["auditor"],
        api_purposes={"alpha": "TREAT"},
        reid_operators=[OPERATOR],
    )
    dep.start()

    def summarised() -> bool:
        with dep.db.sessions() as s:
            done = s.execute(select(func.count(Job.patient.distinct())).where(Job.status == JobStatus.DONE))
            return done.scalar_one() == patients

    try:
        dep.deliver(*(message(seq, run, patient_count=patients) for seq in range(1, messages + 1)))
        wait_for(summarised, timeout=120)
    except BaseException:
        dep.stop()
        raise
    return dep


def patient_ids(dep: Embedded) -> list[str]:
    with dep.db.sessions() as s:
        return sorted(
            s.execute(select(Resource.resource_id).where(Resource.resource_type == "Patient")).scalars()
        )
