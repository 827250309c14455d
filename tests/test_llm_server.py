"""The real model server the model-zone tests run against: llama-cpp-python's OpenAI API
serving SmolLM2-135M-Instruct, offline, over a real socket.

What the sandbox relies on from it: a chat completion constrained by the answer's JSON
Schema (``response_format`` ``json_object`` with ``schema``; this server refuses
``json_schema``) comes back as JSON of that shape, citing only the prompt's fact ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.facts import facts_for
from sandbox.prompt import answer_schema, build_prompt
from tests.fixtures.llm_server import MODEL_ALIAS, LlmServer, llm_server, running_llm_server  # noqa: F401


def _observation(oid: str, code: str, value: float, unit: str, flag: str | None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1"},
        "status": "final",
        "code": {"text": code},
        "valueQuantity": {"value": value, "unit": unit},
        "effectiveDateTime": "2024-03-01T08:00:00Z",
    }
    if flag:
        obs["interpretation"] = [{"coding": [{"code": flag}]}]
    return obs


def _chat(server: LlmServer, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(timeout=120.0) as client:
        try:
            return client.post(f"{server.base_url}/chat/completions", json=body)
        except httpx.TransportError as exc:
            tail = server.stderr_tail()
            raise AssertionError(f"the model server failed ({exc}); it wrote:\n{tail}") from exc


def test_models_lists_the_served_model(llm_server: LlmServer) -> None:  # noqa: F811
    with httpx.Client(timeout=10.0) as client:
        response = client.get(f"{llm_server.base_url}/models")
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == [MODEL_ALIAS] == [llm_server.model]


def test_answer_is_json_of_the_schema_citing_only_the_prompts_facts(llm_server: LlmServer) -> None:  # noqa: F811
    facts = facts_for(
        [
            _observation("na", "Sodium", 128, "mmol/L", "L"),
            _observation("k", "Potassium", 4.1, "mmol/L", None),
        ],
        "en",
    )
    assert [f.id for f in facts] == ["F1", "F2"]
    prompt = build_prompt("lab-report/1", "lab-report", "en", facts)
    schema = answer_schema(["F1", "F2"])
    assert prompt.schema == schema
    response = _chat(
        llm_server,
        {
            "model": llm_server.model,
            "messages": prompt.messages,
            "temperature": 0,
            "seed": 18,
            "max_tokens": 512,
            "response_format": {"type": "json_object", "schema": schema},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL_ALIAS
    choice = body["choices"][0]
    # The grammar closes the JSON; an answer cut at the token limit would not parse.
    assert choice["finish_reason"] == "stop", choice
    answer = json.loads(choice["message"]["content"])
    assert set(answer) == {"sentences"}
    assert len(answer["sentences"]) >= 1
    for sentence in answer["sentences"]:
        assert set(sentence) == {"text", "facts"}
        assert isinstance(sentence["text"], str) and sentence["text"]
        assert sentence["facts"], sentence
        assert set(sentence["facts"]) <= {"F1", "F2"}, sentence
    assert body["usage"]["completion_tokens"] > 0


def test_json_schema_response_format_is_refused_with_a_500_naming_it(llm_server: LlmServer) -> None:  # noqa: F811
    # Why the model client needs its json_object fallback, and why it must tell this 500 (a
    # refusal, not worth retrying) from a server error: the body names what was refused.
    response = _chat(
        llm_server,
        {
            "model": llm_server.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": answer_schema(["F1"])},
            },
        },
    )
    assert response.status_code == 500, response.text
    assert "json_schema" in response.text and "response_format" in response.text


def test_the_context_manager_stops_its_server() -> None:
    with running_llm_server() as server, httpx.Client(timeout=10.0) as client:
        assert client.get(f"{server.base_url}/models").status_code == 200
    with httpx.Client(timeout=2.0) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{server.base_url}/models")
    # Reaped, not merely unreachable: no process keeps the model loaded after the run.
    assert not Path(f"/proc/{server.pid}").exists()
