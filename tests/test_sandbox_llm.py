"""The OpenAI-compatible model client (sandbox.llm) against a stub server over a real socket:
the request it sends, its retries and refusals, reasoning stripped, the response_format
fallback, and the destination lock."""

from __future__ import annotations

import json
import pickle
import random
import socket

import pytest

from sandbox.facts import Fact
from sandbox.llm import DestinationRefused, ModelConfig, OpenAIChatModel, load_model, strip_reasoning
from sandbox.models import ExtractiveSummarizer, ModelUnavailable, ReplyRefused
from sandbox.prompt import Prompt, build_prompt
from tests.fixtures.chat_stub import ChatStub, Scripted, completion

ANSWER = '{"sentences": [{"text": "Sodium 150 mmol/L (high).", "facts": ["F1"]}]}'


@pytest.fixture
def prompt() -> Prompt:
    facts = (
        Fact(
            "F1", "Observation/o1/_history/1", "value", "Observation", "Sodium 150 mmol/L (high)", "H", True
        ),
        Fact("F2", "Observation/o2/_history/1", "value", "Observation", "Potassium 4.1 mmol/L", None, False),
    )
    return build_prompt("lab-report/1", "lab-report", "en", facts)


@pytest.fixture
def stub():
    with ChatStub() as server:
        yield server


class Sleeps(list[float]):
    """The back-off's clock: records each delay instead of waiting it."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(base_url: str, sleeps: Sleeps | None = None, **overrides) -> OpenAIChatModel:
    settings = {"name": "qwen2.5-7b", "timeout_s": 0.2, "max_retries": 2, "backoff_s": 0.001, **overrides}
    return OpenAIChatModel(
        ModelConfig(base_url=base_url, **settings),
        sleep=sleeps if sleeps is not None else Sleeps(),
        rng=random.Random(1),
    )


def test_request_carries_the_prompt_temperature_zero_seed_limit_key_and_schema(stub, prompt):
    stub.reply(ANSWER)
    with client(stub.base_url, api_key="s3cret-key", seed=7, max_tokens=333) as model:
        model.answer(prompt)
    [request] = stub.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer s3cret-key"
    body = request.json
    assert body["model"] == "qwen2.5-7b"
    assert body["messages"] == prompt.messages
    assert body["temperature"] == 0
    assert body["seed"] == 7
    assert body["max_tokens"] == 333
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "summary", "strict": True, "schema": prompt.schema},
    }


def test_no_authorization_header_without_a_key(stub, prompt):
    stub.reply(ANSWER)
    with client(stub.base_url) as model:
        model.answer(prompt)
    assert "authorization" not in stub.requests[0].headers


def test_the_key_stays_out_of_the_config_repr_and_pickles_with_it():
    config = ModelConfig(base_url="http://10.0.8.5:8000/v1", api_key="s3cret-key")
    assert "s3cret-key" not in repr(config)
    assert pickle.loads(pickle.dumps(config)) == config


def test_served_model_id_and_usage_recorded(stub, prompt):
    stub.reply(
        ANSWER,
        model="Qwen/Qwen2.5-7B-Instruct",
        response_id="chatcmpl-42",
        usage={
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "detail": {"x": 1},
            "f": 1.5,
        },
    )
    with client(stub.base_url) as model:
        reply = model.answer(prompt)
    assert reply.content == ANSWER
    assert reply.model == "Qwen/Qwen2.5-7B-Instruct"
    assert reply.response_id == "chatcmpl-42"
    assert reply.usage == {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    assert reply.finish_reason == "stop"
    assert (model.name, model.version) == ("qwen2.5-7b", "openai-chat")


def test_timeout_then_success_is_retried(stub, prompt):
    stub.reply(ANSWER, delay=2.0)
    stub.reply(ANSWER)
    sleeps = Sleeps()
    with client(stub.base_url, sleeps) as model:
        reply = model.answer(prompt)
    assert reply.content == ANSWER
    assert len(stub.requests) == 2
    assert len(sleeps) == 1


def test_500_500_200_is_retried_with_growing_back_off(stub, prompt):
    stub.reply(status=500)
    stub.reply(status=502)
    stub.reply(ANSWER)
    sleeps = Sleeps()
    with client(stub.base_url, sleeps, backoff_s=1.0, backoff_max_s=60.0) as model:
        assert model.answer(prompt).content == ANSWER
    assert len(stub.requests) == 3
    # Exponential with jitter: the n-th delay lies in [base·2ⁿ/2, base·2ⁿ].
    assert 0.5 <= sleeps[0] <= 1.0
    assert 1.0 <= sleeps[1] <= 2.0


def test_500_after_every_retry_is_unavailable_naming_the_status_not_the_body(stub, prompt):
    for _ in range(3):
        stub.script(Scripted(status=500, body={"error": {"message": "GPU on fire: patient-secret"}}))
    with client(stub.base_url, max_retries=2) as model, pytest.raises(ModelUnavailable) as caught:
        model.answer(prompt)
    assert len(stub.requests) == 3
    assert "HTTP 500" in str(caught.value)
    assert "patient-secret" not in str(caught.value)
    assert caught.value.code == "model-unavailable"


def test_connection_refused_is_unavailable(prompt):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    with (
        client(f"http://127.0.0.1:{port}/v1", sleeps, max_retries=1) as model,
        pytest.raises(ModelUnavailable, match="ConnectError"),
    ):
        model.answer(prompt)
    assert len(sleeps) == 1


def test_429_honours_retry_after_capped(stub, prompt):
    stub.reply(status=429, headers={"Retry-After": "3"})
    stub.reply(status=429, headers={"Retry-After": "3600"})
    stub.reply(ANSWER)
    sleeps = Sleeps()
    with client(stub.base_url, sleeps, backoff_max_s=10.0) as model:
        assert model.answer(prompt).content == ANSWER
    assert sleeps == [3.0, 10.0]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_refused_at_once(stub, prompt, status):
    stub.reply(status=status)
    stub.reply(status=status)
    sleeps = Sleeps()
    with client(stub.base_url, sleeps) as model, pytest.raises(ReplyRefused) as caught:
        model.answer(prompt)
    assert caught.value.code == "model-refused"
    assert f"HTTP {status}" in str(caught.value)
    assert sleeps == []
    # 400 and 422 may be a refusal of json_schema: one json_object try; 401 and 404 cannot be.
    assert len(stub.requests) == (2 if status in (400, 422) else 1)


def test_json_schema_refused_falls_back_to_json_object_with_the_schema_and_remembers(stub, prompt):
    stub.reply(status=400, body={"error": {"message": "response_format type json_schema is not supported"}})
    stub.reply(ANSWER)
    stub.reply(ANSWER)
    with client(stub.base_url) as model:
        assert model.answer(prompt).content == ANSWER
        assert model.answer(prompt).content == ANSWER
    formats = [request.json["response_format"] for request in stub.requests]
    assert formats[0]["type"] == "json_schema"
    assert formats[1] == {"type": "json_object", "schema": prompt.schema}
    assert formats[2] == {"type": "json_object", "schema": prompt.schema}
    assert len(stub.requests) == 3


def test_a_server_error_that_blames_json_schema_falls_back_at_once(stub, prompt):
    # llama-cpp-python's server answers json_schema with a 500 naming it: not a transient
    # failure to retry, a format to give up.
    stub.reply(status=500, body={"error": {"message": "Unsupported response_format type: json_schema"}})
    stub.reply(ANSWER)
    with client(stub.base_url) as model:
        assert model.answer(prompt).content == ANSWER
    assert [r.json["response_format"]["type"] for r in stub.requests] == ["json_schema", "json_object"]


def test_fallback_not_remembered_when_json_object_is_refused_too(stub, prompt):
    # A request-specific 400 (a prompt too long) must not downgrade later requests.
    stub.reply(status=400)
    stub.reply(status=400)
    stub.reply(ANSWER)
    with client(stub.base_url) as model:
        with pytest.raises(ReplyRefused):
            model.answer(prompt)
        model.answer(prompt)
    assert [r.json["response_format"]["type"] for r in stub.requests] == [
        "json_schema",
        "json_object",
        "json_schema",
    ]


def test_answer_cut_at_the_token_limit_is_refused(stub, prompt):
    stub.reply('{"sentences": [{"text": "Sodium 150', finish_reason="length")
    with client(stub.base_url) as model, pytest.raises(ReplyRefused) as caught:
        model.answer(prompt)
    assert caught.value.code == "model-truncated"
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        "<html>Bad gateway</html>",
        '{"choices": []}',
        '{"choices": [{"finish_reason": "stop"}]}',
        '["not", "an", "object"]',
        json.dumps(completion(None) | {"choices": [{"message": {"content": ["parts"]}}]}),
    ],
)
def test_reply_that_is_not_the_apis_json_is_refused(stub, prompt, body):
    stub.reply(body=body)
    with client(stub.base_url) as model, pytest.raises(ReplyRefused) as caught:
        model.answer(prompt)
    assert caught.value.code == "model-bad-reply"


def test_think_block_stripped(stub, prompt):
    stub.reply(f"<think>The sodium is 150, so I will call it low.</think>\n{ANSWER}")
    with client(stub.base_url) as model:
        assert model.answer(prompt).content == ANSWER


@pytest.mark.parametrize(
    "content",
    [
        "<think>Sodium is low, I think; still reasoning when the",
        "  <thinking>only reasoning</thinking>  ",
        "   ",
    ],
)
def test_nothing_but_reasoning_is_empty(stub, prompt, content):
    stub.reply(content)
    with client(stub.base_url) as model, pytest.raises(ReplyRefused) as caught:
        model.answer(prompt)
    assert caught.value.code == "model-empty"


def test_null_content_is_empty(stub, prompt):
    stub.reply(body=completion(None))
    with client(stub.base_url) as model, pytest.raises(ReplyRefused) as caught:
        model.answer(prompt)
    assert caught.value.code == "model-empty"


def test_reasoning_content_ignored(stub, prompt):
    stub.reply(ANSWER, reasoning_content="Sodium 150 is low. [F9] invented diagnosis")
    with client(stub.base_url) as model:
        reply = model.answer(prompt)
    assert reply.content == ANSWER
    assert "invented" not in repr(reply)


def test_reasoning_content_alone_is_empty(stub, prompt):
    stub.reply(body=completion("", reasoning_content=ANSWER))
    with client(stub.base_url) as model, pytest.raises(ReplyRefused) as caught:
        model.answer(prompt)
    assert caught.value.code == "model-empty"


def test_strip_reasoning_forms():
    assert strip_reasoning("<THINK>a</THINK>b<thinking>c</thinking>d") == "bd"
    # DeepSeek-R1 distills: the chat template sent <think>, the reply holds only its end.
    assert strip_reasoning("reasoning about 150\n</think>\n\n{}") == "{}"
    assert strip_reasoning('{"a": 1} <think>cut short') == '{"a": 1}'


def test_destination_lock_refuses_another_port_before_connecting(stub, prompt):
    with ChatStub() as other, client(stub.base_url) as model:
        with pytest.raises(DestinationRefused) as caught:
            model.http.post(f"{other.base_url}/chat/completions", json={})
        assert caught.value.code == "model-destination"
        assert other.connections == 0
        assert other.requests == []


@pytest.mark.parametrize(
    "url", ["http://localhost:{port}/v1", "https://127.0.0.1:{port}/v1", "http://127.0.0.2:{port}"]
)
def test_destination_lock_refuses_another_host_or_scheme(stub, url):
    with client(stub.base_url) as model, pytest.raises(DestinationRefused):
        model.http.get(url.format(port=stub.port))
    assert stub.connections == 0


def test_redirect_refused_and_not_followed(stub, prompt):
    with ChatStub() as other, client(stub.base_url) as model:
        other.reply(ANSWER)
        stub.reply(status=302, body="", headers={"Location": f"{other.base_url}/chat/completions"})
        with pytest.raises(ReplyRefused) as caught:
            model.answer(prompt)
        assert caught.value.code == "model-redirect"
        assert other.connections == 0
        assert other.requests == []
        # Even when asked to follow it, the lock stops the redirect's request.
        stub.reply(status=307, body="", headers={"Location": f"{other.base_url}/chat/completions"})
        with pytest.raises(DestinationRefused):
            model.http.post(f"{stub.base_url}/chat/completions", json={}, follow_redirects=True)
        assert other.connections == 0


def test_proxy_from_the_environment_not_used(stub, prompt, monkeypatch):
    with ChatStub() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.origin)
        monkeypatch.setenv("ALL_PROXY", proxy.origin)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        stub.reply(ANSWER)
        with client(stub.base_url) as model:
            assert model.answer(prompt).content == ANSWER
        assert proxy.connections == 0
        assert len(stub.requests) == 1


@pytest.mark.parametrize("url", ["ftp://10.0.0.1/v1", "10.0.0.1:8000", "http:///v1", "http://h/v1?x=1"])
def test_bad_base_url_is_a_clear_error(url):
    with pytest.raises(ValueError, match="model_base_url"):
        ModelConfig(base_url=url)


def test_load_model_chooses_server_factory_or_extractive(stub):
    config = ModelConfig(base_url=stub.base_url, name="m")
    assert isinstance(load_model(config, "no.such.module:factory"), OpenAIChatModel)
    assert isinstance(load_model(None, None), ExtractiveSummarizer)
    assert isinstance(load_model(None, "sandbox.models:ExtractiveSummarizer"), ExtractiveSummarizer)


def test_settings_reach_the_sandbox_config_key_included(tmp_path, stub, prompt):
    from core.settings import Settings
    from sidecar.sandbox_process import sandbox_config

    settings = Settings(
        data_dir=tmp_path,
        model_base_url=stub.base_url,
        model_name="llama3",
        model_api_key="s3cret-key",
        model_timeout_s=5,
        model_max_tokens=99,
        model_seed=3,
        model_version="3.1",
    )
    # The child gets its config pickled (multiprocessing's spawn): the key travels there.
    config = pickle.loads(pickle.dumps(sandbox_config(settings)))
    assert config.model_config is not None
    stub.reply(ANSWER)
    model = load_model(config.model_config, config.model)
    assert isinstance(model, OpenAIChatModel)
    assert (model.name, model.version) == ("llama3", "3.1")
    with model:
        model.answer(prompt)
    request = stub.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret-key"
    assert (request.json["model"], request.json["max_tokens"], request.json["seed"]) == ("llama3", 99, 3)
    assert sandbox_config(Settings(data_dir=tmp_path)).model_config is None
