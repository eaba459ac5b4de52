"""Model backends against local servers speaking the real wire formats.

vLLM (needs a GPU) and the Mistral API (remote) cannot run here, so ``tests/fakes.py`` stands
in for them over real HTTP; the project's real clients (``openai`` SDK, ``mistralai`` SDK) do
the talking. The embedded llama.cpp backend is exercised against the real server elsewhere;
here only its request shape is checked.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel, Field

import settings
from inference import retry
from inference.embedding import MISTRAL_BATCH, MistralEmbedder, OpenAIEmbedder
from inference.llm import ChatModel, Completion, InvalidModelOutput, ModelError
from fakes import (  # tests/ is on sys.path (rootdir conftest, no __init__.py)
    DROP,
    FakeServer,
    mistral_chat,
    mistral_embeddings,
    mistral_error,
    mistral_stream,
    mistral_validation_error,
    openai_chat,
    openai_embeddings,
    openai_error,
    openai_stream,
    role_on,
)

pytestmark = pytest.mark.pure

MAX_RETRIES = 2  # -> 3 attempts per call
MSGS = [{"role": "system", "content": "You are Mara."}, {"role": "user", "content": "Hello"}]

SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"type": "string", "enum": ["calm", "angry", "afraid"]},
        "note": {"type": "string", "maxLength": 80},
    },
    "required": ["mood", "note"],
    "additionalProperties": False,
}


class Mood(BaseModel):
    mood: Literal["calm", "angry", "afraid"]
    note: str = Field(max_length=80)


_ENV_VARS = [f"{p}_{k}" for p in ("LLM", "GENERATION", "ANALYSIS", "MAINTENANCE")
             for k in ("BACKEND", "BASE_URL", "MODEL")] + [
    "MISTRAL_API_KEY", "MISTRAL_SERVER_URL", "LLM_MAX_RETRIES", "LLM_TIMEOUT_S", "LLM_API_KEY"]


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def configure():
    """``configure(VAR=value, ...)`` sets the environment and re-reads the settings; the
    environment and the settings cache are restored after the test (so other test files keep
    conftest's settings)."""
    mp = pytest.MonkeyPatch()
    for var in _ENV_VARS:  # start from conftest's environment, without role overrides
        if var.startswith(("GENERATION_", "ANALYSIS_", "MAINTENANCE_")):
            mp.delenv(var, raising=False)

    def apply(**env):
        for key, value in env.items():
            mp.setenv(key, str(value))
        settings.get_settings.cache_clear()

    apply(LLM_MAX_RETRIES=MAX_RETRIES, LLM_TIMEOUT_S=10)
    try:
        yield apply
    finally:
        mp.undo()
        settings.get_settings.cache_clear()


@pytest.fixture
def backoff(monkeypatch):
    """Replace tenacity's exponential-jitter fallback (up to 20 s) with an instant wait that
    counts its uses: ``backoff.calls == 0`` proves every wait came from ``Retry-After``."""

    class Recorder:
        calls = 0

        def __call__(self, retry_state) -> float:
            Recorder.calls += 1
            return 0.0

    rec = Recorder()
    monkeypatch.setattr(retry, "wait_exponential_jitter", lambda *a, **kw: rec)
    return rec


def vllm_model(configure, server, role="analysis", model=None) -> ChatModel:
    configure(**{f"{role.upper()}_BACKEND": "vllm",
                 f"{role.upper()}_BASE_URL": f"{server.url}/v1",
                 f"{role.upper()}_MODEL": "npc-analysis-lora",
                 "LLM_API_KEY": "vllm-key"})
    return ChatModel(role, model=model)


def mistral_model(configure, server, role="generation") -> ChatModel:
    configure(**{f"{role.upper()}_BACKEND": "mistral",
                 f"{role.upper()}_MODEL": "mistral-small-latest",
                 "MISTRAL_API_KEY": "mistral-test-key",
                 "MISTRAL_SERVER_URL": server.url})
    return ChatModel(role)


CHAT = "/v1/chat/completions"


# --- 1. request shapes per backend -----------------------------------------------------------

def test_vllm_sends_json_schema_response_format_and_returns_usage(configure, server):
    model = vllm_model(configure, server)
    server.script(openai_chat('{"mood": "calm", "note": "ok"}', prompt_tokens=31, completion_tokens=9))

    done = model.complete(MSGS, max_tokens=64, temperature=0.2, json_schema=SCHEMA,
                          schema_name="mood", seed=7)

    assert done == Completion(text='{"mood": "calm", "note": "ok"}', finish_reason="stop",
                              prompt_tokens=31, completion_tokens=9)
    assert done.tokens == 40
    [req] = server.posts(CHAT)
    body = req.body
    assert body["model"] == "npc-analysis-lora"
    assert body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA, "strict": True}}
    assert body["messages"] == MSGS
    assert body["max_tokens"] == 64 and body["temperature"] == 0.2 and body["seed"] == 7
    assert "repeat_penalty" not in body  # llama.cpp-only knob
    assert req.headers["authorization"] == "Bearer vllm-key"


def test_vllm_model_override_selects_lora_adapter(configure, server):
    model = vllm_model(configure, server, role="maintenance", model="npc-42-adapter")
    server.script(openai_chat("hi"))
    assert model.complete(MSGS).text == "hi"
    [req] = server.posts(CHAT)
    assert req.body["model"] == "npc-42-adapter"
    assert "response_format" not in req.body and "seed" not in req.body


def test_role_falls_back_to_shared_llm_settings(configure, server):
    configure(LLM_BACKEND="vllm", LLM_BASE_URL=f"{server.url}/v1", LLM_MODEL="shared-model")
    server.script(openai_chat("x"))
    ChatModel("generation").complete(MSGS, json_schema=SCHEMA)
    [req] = server.posts(CHAT)
    assert req.body["model"] == "shared-model"
    assert req.body["response_format"]["type"] == "json_schema"


def test_llamacpp_sends_json_object_schema_and_repeat_penalty(configure, server):
    # Request shape only (the real llama.cpp server is covered by the e2e tests).
    configure(ANALYSIS_BACKEND="llamacpp", ANALYSIS_BASE_URL=f"{server.url}/v1",
              ANALYSIS_MODEL="smollm2-135m-instruct")
    server.script(openai_chat('{"mood": "afraid", "note": "n"}', prompt_tokens=5, completion_tokens=4))

    done = ChatModel("analysis").complete(MSGS, json_schema=SCHEMA, seed=3)

    assert (done.prompt_tokens, done.completion_tokens) == (5, 4)
    [req] = server.posts(CHAT)
    assert req.body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert req.body["repeat_penalty"] == 1.3
    assert req.body["model"] == "smollm2-135m-instruct"
    assert req.body["seed"] == 3


# --- 2. retries ---------------------------------------------------------------------------------

def test_429_with_retry_after_is_retried(configure, server, backoff):
    model = vllm_model(configure, server)
    server.script(openai_error(429, "slow down", retry_after="0"), openai_chat("done"))
    assert model.complete(MSGS).text == "done"
    assert len(server.posts(CHAT)) == 2
    assert backoff.calls == 0  # the wait came from Retry-After


def test_503_twice_then_success(configure, server, backoff):
    model = vllm_model(configure, server)
    server.script(openai_error(503, retry_after="0"), openai_error(503, retry_after="0"),
                  openai_chat("third time"))
    assert model.complete(MSGS).text == "third time"
    assert len(server.posts(CHAT)) == 3
    assert backoff.calls == 0


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_are_not_retried(configure, server, backoff, status):
    model = vllm_model(configure, server)
    server.script(openai_error(status, "bad request", retry_after="0"), openai_chat("never"))
    with pytest.raises(ModelError) as info:
        model.complete(MSGS)
    assert not isinstance(info.value, InvalidModelOutput)
    assert len(server.posts(CHAT)) == 1


def test_retries_are_bounded(configure, server, backoff):
    model = vllm_model(configure, server)
    server.default = openai_error(500, "boom", retry_after="0")
    with pytest.raises(ModelError):
        model.complete(MSGS)
    assert len(server.posts(CHAT)) == MAX_RETRIES + 1


def test_dropped_connection_is_retried_with_backoff(configure, server, backoff):
    model = vllm_model(configure, server)
    server.script(DROP, openai_chat("back"))
    assert model.complete(MSGS).text == "back"
    assert len(server.posts(CHAT)) == 2
    assert backoff.calls == 1  # no Retry-After without a response: exponential fallback


# --- 3. complete_json ---------------------------------------------------------------------------

def test_complete_json_repairs_broken_json_on_first_call(configure, server):
    model = vllm_model(configure, server)
    server.script(openai_chat('{"mood": "angry", "note": "they lied",', prompt_tokens=20, completion_tokens=8))
    out, tokens = model.complete_json(MSGS, Mood, SCHEMA)
    assert out == Mood(mood="angry", note="they lied")
    assert tokens == 28
    assert len(server.posts(CHAT)) == 1


def test_complete_json_retries_with_validation_error(configure, server):
    model = vllm_model(configure, server)
    bad = '{"mood": "ecstatic", "note": "x"}'
    server.script(openai_chat(bad, prompt_tokens=10, completion_tokens=3),
                  openai_chat('{"mood": "calm", "note": "fine"}', prompt_tokens=12, completion_tokens=4))

    out, tokens = model.complete_json(MSGS, Mood, SCHEMA)

    assert out == Mood(mood="calm", note="fine")
    assert tokens == 29
    first, second = server.posts(CHAT)
    assert first.body["messages"] == MSGS
    msgs = second.body["messages"]
    assert msgs[:2] == MSGS
    assert msgs[2] == {"role": "assistant", "content": bad}
    assert msgs[3]["role"] == "user"
    assert "validation error" in msgs[3]["content"] and "mood" in msgs[3]["content"]
    assert "'calm', 'angry' or 'afraid'" in msgs[3]["content"]  # pydantic's own message
    assert first.body["seed"] != second.body["seed"]


def test_complete_json_treats_length_cutoff_as_invalid(configure, server):
    model = vllm_model(configure, server)
    server.script(openai_chat('{"mood": "calm", "note": "fine"}', finish_reason="length"),
                  openai_chat('{"mood": "afraid", "note": "short"}'))
    out, _ = model.complete_json(MSGS, Mood, SCHEMA, max_tokens=50)
    assert out.mood == "afraid"
    first, second = server.posts(CHAT)
    assert "truncated" in second.body["messages"][-1]["content"]


def test_complete_json_gives_up_with_raw_output(configure, server):
    model = vllm_model(configure, server)
    server.script(openai_chat(""), openai_chat('{"mood": 5}'), openai_chat('{"mood": "bored", "note": "z"}'))
    with pytest.raises(InvalidModelOutput) as info:
        model.complete_json(MSGS, Mood, SCHEMA, attempts=3)
    assert info.value.raw == '{"mood": "bored", "note": "z"}'
    assert "mood" in info.value.error
    assert isinstance(info.value, ModelError)
    assert len(server.posts(CHAT)) == 3


def test_complete_json_propagates_server_failure_as_model_error(configure, server, backoff):
    model = vllm_model(configure, server)
    server.script(openai_error(400, "context length exceeded"))
    with pytest.raises(ModelError) as info:
        model.complete_json(MSGS, Mood, SCHEMA)
    assert not isinstance(info.value, InvalidModelOutput)
    assert len(server.posts(CHAT)) == 1


# --- 4. Mistral -------------------------------------------------------------------------------

def test_mistral_complete_sends_random_seed_and_schema(configure, server):
    model = mistral_model(configure, server)
    server.script(mistral_chat('{"mood": "calm", "note": "hi"}', prompt_tokens=17, completion_tokens=6))

    done = model.complete(MSGS, max_tokens=90, temperature=0.4, json_schema=SCHEMA,
                          schema_name="mood", seed=11)

    assert done == Completion('{"mood": "calm", "note": "hi"}', "stop", 17, 6)
    [req] = server.posts(CHAT)
    body = req.body
    assert body["model"] == "mistral-small-latest"
    assert body["random_seed"] == 11 and "seed" not in body
    assert body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA, "strict": True}}
    assert body["max_tokens"] == 90 and body["temperature"] == 0.4
    assert [(m["role"], m["content"]) for m in body["messages"]] == [(m["role"], m["content"]) for m in MSGS]
    assert req.headers["authorization"] == "Bearer mistral-test-key"


def test_mistral_complete_json_round_trip(configure, server):
    model = mistral_model(configure, server)
    server.script(mistral_chat('{"mood": "x"}', finish_reason="stop"),
                  mistral_chat('{"mood": "angry", "note": "n"}', finish_reason="stop"))
    out, tokens = model.complete_json(MSGS, Mood, SCHEMA)
    assert out.mood == "angry" and tokens == 36
    assert [r.body["random_seed"] for r in server.posts(CHAT)] == [0, 1]


def test_mistral_retries_429_and_5xx(configure, server, backoff):
    model = mistral_model(configure, server)
    server.script(mistral_error(429, "Requests rate limit exceeded", retry_after="0"),
                  mistral_error(503, "Service unavailable", retry_after="0"),
                  mistral_chat("ok"))
    assert model.complete(MSGS).text == "ok"
    assert len(server.posts(CHAT)) == 3


@pytest.mark.parametrize("reply", [mistral_error(400, "Invalid model"), mistral_validation_error()],
                         ids=["400", "422"])
def test_mistral_client_errors_are_not_retried(configure, server, backoff, reply):
    model = mistral_model(configure, server)
    server.script(reply, mistral_chat("never"))
    with pytest.raises(ModelError):
        model.complete(MSGS)
    assert len(server.posts(CHAT)) == 1


def test_mistral_retries_are_bounded(configure, server, backoff):
    model = mistral_model(configure, server)
    server.default = mistral_error(500, "boom", retry_after="0")
    with pytest.raises(ModelError):
        model.complete(MSGS)
    assert len(server.posts(CHAT)) == MAX_RETRIES + 1


def test_mistral_honours_retry_after(configure, server, backoff):
    model = mistral_model(configure, server)
    server.script(mistral_error(429, retry_after="0"), mistral_chat("ok"))
    assert model.complete(MSGS).text == "ok"
    assert backoff.calls == 0


def test_mistral_dropped_connection_is_retried(configure, server, backoff):
    model = mistral_model(configure, server)
    server.script(DROP, mistral_chat("back"))
    assert model.complete(MSGS).text == "back"
    assert len(server.posts(CHAT)) == 2


# --- 5. streaming -----------------------------------------------------------------------------

@pytest.fixture
def observed():
    """The (role, backend, completion or None) of every model call observed meanwhile."""
    from inference import llm

    calls: list[tuple] = []

    def observe(role, backend, seconds, done):
        assert seconds >= 0
        calls.append((role, backend, done))

    llm.add_call_observer(observe)
    try:
        yield calls
    finally:
        llm._observers.remove(observe)


PIECES = ["Well", " met", ",", " traveller", "."]


def test_vllm_stream_yields_deltas_and_the_servers_usage(configure, server, observed):
    model = vllm_model(configure, server)
    server.script(openai_stream(PIECES, prompt_tokens=31, model="npc-analysis-lora"))

    stream = model.stream(MSGS, max_tokens=40, temperature=0.3)
    assert observed == []  # not before the end
    deltas = list(stream)

    assert deltas == PIECES
    assert stream.completion == Completion("Well met, traveller.", "stop", 31, len(PIECES))
    [req] = server.posts(CHAT)
    assert req.body["stream"] is True
    assert req.body["stream_options"] == {"include_usage": True}
    assert req.body["model"] == "npc-analysis-lora" and req.body["messages"] == MSGS
    assert req.body["max_tokens"] == 40 and req.body["temperature"] == 0.3
    assert observed == [("analysis", "vllm", stream.completion)]


def test_llamacpp_stream_counts_chunks_without_usage(configure, server):
    configure(GENERATION_BACKEND="llamacpp", GENERATION_BASE_URL=f"{server.url}/v1",
              GENERATION_MODEL="smollm2-135m-instruct")
    server.script(openai_stream(PIECES))
    stream = ChatModel("generation").stream(MSGS)
    assert "".join(stream) == "Well met, traveller."
    assert stream.completion.completion_tokens == len(PIECES)  # one chunk per token
    assert stream.completion.prompt_tokens == 0  # llama.cpp reports no usage in a stream
    [req] = server.posts(CHAT)
    assert "stream_options" not in req.body and req.body["repeat_penalty"] == 1.3


def test_stream_retries_before_the_first_token(configure, server, backoff):
    model = vllm_model(configure, server)
    server.script(openai_error(503, retry_after="0"), DROP, openai_stream(PIECES))
    assert "".join(model.stream(MSGS)) == "Well met, traveller."
    assert len(server.posts(CHAT)) == 3


def test_stream_dropped_before_the_first_token_is_retried(configure, server, backoff):
    model = vllm_model(configure, server)
    server.script(openai_stream(PIECES, drop_after=1), openai_stream(["again"]))
    assert list(model.stream(MSGS)) == ["again"]
    assert len(server.posts(CHAT)) == 2


@pytest.mark.parametrize("reply", [openai_error(400, "context length exceeded"),
                                   openai_error(404, "The model `x` does not exist.")],
                         ids=["400", "404"])
def test_stream_client_errors_raise_at_once(configure, server, backoff, observed, reply):
    model = vllm_model(configure, server)
    server.script(reply, openai_stream(PIECES))
    with pytest.raises(ModelError):
        model.stream(MSGS)
    assert len(server.posts(CHAT)) == 1
    assert observed == [("analysis", "vllm", None)]


def test_stream_dropped_mid_way_is_a_model_error_and_not_retried(configure, server, backoff,
                                                                 observed):
    model = vllm_model(configure, server)
    server.script(openai_stream(PIECES, drop_after=3), openai_stream(["never"]))
    stream = model.stream(MSGS)
    got = []
    with pytest.raises(ModelError, match="stream failed"):
        for delta in stream:  # keep what arrived before the failure
            got.append(delta)  # noqa: PERF402
    assert got == ["Well", " met"] and stream.text == "Well met"
    assert stream.completion is None
    assert len(server.posts(CHAT)) == 1
    assert observed == [("analysis", "vllm", None)]
    assert list(stream) == []  # a failed stream stays ended


def test_stream_error_event_mid_way_is_a_model_error(configure, server):
    model = vllm_model(configure, server)
    server.script(openai_stream(PIECES[:2], error="engine dead"))
    stream = model.stream(MSGS)
    assert next(stream) == "Well"
    with pytest.raises(ModelError, match="engine dead"):
        list(stream)


def test_stream_closed_early_reports_what_arrived(configure, server, observed):
    model = vllm_model(configure, server)
    server.script(openai_stream(PIECES))
    with model.stream(MSGS) as stream:
        assert next(stream) == "Well"
    assert stream.completion == Completion("Well", "cancelled", 0, 1)
    assert observed == [("analysis", "vllm", stream.completion)]
    assert list(stream) == []


def test_mistral_stream_reads_the_sdk_event_stream(configure, server, observed):
    model = mistral_model(configure, server)
    server.script(mistral_stream(PIECES, prompt_tokens=17, finish_reason="length"))

    stream = model.stream(MSGS, max_tokens=5, temperature=0.2)
    assert list(stream) == PIECES
    assert stream.completion == Completion("Well met, traveller.", "length", 17, len(PIECES))
    [req] = server.posts(CHAT)
    assert req.body["stream"] is True and req.body["model"] == "mistral-small-latest"
    assert req.body["max_tokens"] == 5 and req.body["temperature"] == 0.2
    assert req.headers["accept"] == "text/event-stream"
    assert req.headers["authorization"] == "Bearer mistral-test-key"
    assert observed == [("generation", "mistral", stream.completion)]


def test_mistral_stream_retries_before_the_first_token_only(configure, server, backoff):
    model = mistral_model(configure, server)
    server.script(mistral_error(429, retry_after="0"), mistral_stream(PIECES, drop_after=2),
                  mistral_stream(["never"]))
    stream = model.stream(MSGS)
    assert next(stream) == "Well"
    with pytest.raises(ModelError):
        list(stream)
    assert len(server.posts(CHAT)) == 2


def test_mistral_stream_client_error_is_not_retried(configure, server, backoff):
    model = mistral_model(configure, server)
    server.script(mistral_validation_error(), mistral_stream(PIECES))
    with pytest.raises(ModelError):
        model.stream(MSGS)
    assert len(server.posts(CHAT)) == 1


def test_stream_reply_strips_the_name_prefix_like_generate_reply(server):
    """The dialogue prompt's two calls give the same text; the stream's deltas join to it."""
    from inference import calls

    npc = {"title": "Mara the Baker", "content": "Bakes bread.", "entity_type": "character"}
    pieces = ["  Mara", " the", " Baker", ":", " Fresh", " bread", ",", " friend", ".", "  \n"]
    args = (npc, "", [], [("Crypt", "Old bones.")], "Is the bread fresh?")
    with role_on(f"{server.url}/v1", "generation"):
        server.script(openai_chat("".join(pieces)), openai_stream(pieces))
        whole = calls.generate_reply(*args)
        stream = calls.stream_reply(*args)
        deltas = list(stream)
    assert whole.text == "Fresh bread, friend."
    assert "".join(deltas) == whole.text == stream.reply().text
    assert deltas[0] == "Fresh"
    assert stream.reply().tokens == 11 + len(pieces)
    first, second = server.posts(CHAT)
    assert first.body["messages"] == second.body["messages"]  # one prompt for both


@pytest.mark.parametrize("pieces, text", [
    (["Mara"], "Mara"),  # shorter than the prefix: kept
    (["Mara the Baker:"], ""),
    (["Mar", "ket", " day!"], "Market day!"),
    ([" ", "Hi"], "Hi"),
], ids=["short", "only-prefix", "looks-like-prefix", "leading-space"])
def test_stream_reply_prefix_edge_cases(server, pieces, text):
    from inference import calls

    npc = {"title": "Mara the Baker", "content": "", "entity_type": "character"}
    with role_on(f"{server.url}/v1", "generation"):
        server.script(openai_stream(pieces))
        stream = calls.stream_reply(npc, "", [], [], "Hello")
        assert "".join(stream) == text == stream.reply().text


# --- embeddings -------------------------------------------------------------------------------

def _doc_index(text: str) -> int:
    return int(text.rsplit("-", 1)[1])


def _mistral_vectors(texts: list[str]) -> np.ndarray:
    """Unnormalised 1024-d vectors identifying each text: 3 at its index, 4 at the end."""
    out = np.zeros((len(texts), 1024), np.float32)
    for row, text in enumerate(texts):
        out[row, _doc_index(text) % 1023] = 3.0
        out[row, 1023] = 4.0
    return out


def test_mistral_embedder_batches_and_orders(server):
    server.default = mistral_embeddings(_mistral_vectors, order="reversed")
    texts = [f"doc-{i}" for i in range(130)]

    vecs = MistralEmbedder("mistral-embed", "mistral-test-key", server.url).embed(texts)

    batches = server.posts("/v1/embeddings")
    assert [len(r.body["input"]) for r in batches] == [MISTRAL_BATCH, 130 - MISTRAL_BATCH]
    assert batches[0].body["input"] + batches[1].body["input"] == texts
    assert all(r.body["model"] == "mistral-embed" for r in batches)
    assert batches[0].headers["authorization"] == "Bearer mistral-test-key"
    assert vecs.shape == (130, 1024) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-6)
    expected = _mistral_vectors(texts) / 5.0
    np.testing.assert_allclose(vecs, expected, atol=1e-6)


def test_mistral_embedder_empty_input_makes_no_request(server):
    vecs = MistralEmbedder("mistral-embed", "k", server.url).embed([])
    assert vecs.shape == (0, 1024) and vecs.dtype == np.float32
    assert server.requests == []


def test_mistral_embedder_rejects_wrong_dimension(server):
    server.default = mistral_embeddings(lambda texts: np.ones((len(texts), 1536)))
    with pytest.raises(ValueError):
        MistralEmbedder("codestral-embed", "k", server.url).embed(["doc-0", "doc-1"])


def _small_vectors(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 8), np.float32)
    for row, text in enumerate(texts):
        if text == "probe":
            out[row] = 1.0
        else:
            out[row, _doc_index(text) % 7] = 6.0
            out[row, 7] = 8.0
    return out


def test_openai_embedder_learns_dim_and_normalises(server):
    server.default = openai_embeddings(_small_vectors, order="reversed")

    emb = OpenAIEmbedder("bge-small", f"{server.url}/v1", "emb-key")
    assert emb.dim == 8
    [probe] = server.posts("/v1/embeddings")
    assert probe.body["input"] == ["probe"] and probe.body["model"] == "bge-small"

    texts = [f"doc-{i}" for i in range(5)]
    vecs = emb.embed(texts)
    assert len(server.posts("/v1/embeddings")) == 2
    assert vecs.shape == (5, 8) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(vecs, _small_vectors(texts) / 10.0, atol=1e-6)
    assert server.posts("/v1/embeddings")[1].headers["authorization"] == "Bearer emb-key"


def test_openai_embedder_float_encoding_and_given_dim(server):
    # Servers that ignore encoding_format=base64 and answer plain float lists still work.
    def floats_only(req):
        req.body["encoding_format"] = "float"
        return openai_embeddings(_small_vectors)(req)

    server.default = floats_only
    emb = OpenAIEmbedder("bge-small", f"{server.url}/v1", "k", dim=8)
    assert server.requests == []  # no probe when the dim is given
    assert emb.embed([]).shape == (0, 8)
    vecs = emb.embed(["doc-2"])
    np.testing.assert_allclose(vecs[0], [0, 0, 0.6, 0, 0, 0, 0, 0.8], atol=1e-6)
