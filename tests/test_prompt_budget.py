"""Prompt budgets: every prompt fits the model's context, whatever the input lengths.

The trimming order of each template is checked with the real SmolLM2 tokenizer (llama.cpp,
vocabulary only) and the byte bound; the context limit with the real llama.cpp test server
(n_ctx 2048): long turns and an emoji event no longer break an NPC's later turns or the
analysis of the turn.
"""

from __future__ import annotations

import random
import string

import openai
import pytest
from sqlalchemy import select

import prompts
from inference import calls, tokens
from inference.llm import ChatModel, InvalidModelOutput
from memory import nearline
from memory.db import session_scope
from memory.scope import turn_scope
from models import LoreEntry
from prompts import budget
from settings import environment

pytestmark = pytest.mark.pure

LONG_TURN = ("The rain over the old crypt has not stopped for three days, and the villagers "
             "whisper that something walks among the graves at night. ") * 15
EMOJI = "\N{GRINNING FACE}" * 2000


def _wordy_turn(chars: int = 2000) -> str:
    """A valid turn of ``chars`` characters of made-up words: about 1,100 SmolLM2 tokens,
    so three of them overflow a 2048-token context."""
    rng = random.Random(7)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append("".join(rng.choice(string.ascii_lowercase)
                             for _ in range(rng.randint(3, 9))))
    return " ".join(words)[:chars]


WORDY_TURN = _wordy_turn()


def _smollm2() -> tokens.TokenCounter:
    try:
        return tokens.counter("", "llamacpp", "smollm2-135m-instruct")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"SmolLM2 tokenizer unavailable: {exc}")


def _dialogue(**over) -> dict:
    ctx = {
        "npc": {"title": "Baker", "content": "A cheerful baker who rises before dawn. " * 8},
        "note": "Sold two loaves to the player on day 1.",
        "cards": "Trust: warm. Promise: bring flour.",
        "memories": "The player arrived at the village gate on day 1.",
        "recent_turns": [{"player_text": f"turn {i}", "npc_text": f"answer {i}"}
                         for i in range(4)],
        "evidence": [f"[day 1, 07:3{i}] Player: line {i}" for i in range(4)],
        "retrieved": [(f"Doc {i}", f"document {i} " * 20) for i in range(3)],
        "player_text": "Is the bread fresh?",
    }
    ctx.update(over)
    return ctx


def _limit_between(template: str, ctx: dict, counter, share: float) -> int:
    """A limit ``share`` of the way from the untrimmed prompt's count down to 0."""
    return int(counter.count_messages(prompts.messages(template, **ctx)) * share)


# --- counters -----------------------------------------------------------------------------


def test_smollm2_counter_is_exact_and_bytes_bound_it():
    exact = _smollm2()
    assert exact.exact and exact.name.startswith("gguf:")
    msgs = prompts.messages("dialogue", **_dialogue(player_text=EMOJI))
    n = exact.count_messages(msgs)
    assert n > 6000  # one emoji is several SmolLM2 tokens
    assert tokens.ByteCounter().count_messages(msgs) >= n


def test_counter_choice_follows_the_backend_and_the_setting(tmp_path):
    assert tokens.counter("", "vllm", "meta-llama/Llama-3.1-8B").name == "bytes"
    assert tokens.counter("", "mistral", "mistral-small-latest").name == "bytes"
    assert tokens.counter("bytes", "llamacpp", "smollm2-135m-instruct").name == "bytes"
    with pytest.raises(FileNotFoundError):
        tokens.counter(str(tmp_path / "missing.json"), "vllm", "m")


def test_hf_tokenizer_json_counts_content(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    counter = tokens.counter(str(tmp_path), "vllm", "m")
    assert counter.count_text("hello world hello") == 3
    assert counter.count_messages([{"role": "user", "content": "hello world"}]) == (
        2 + tokens.MESSAGE_OVERHEAD + tokens.PROMPT_OVERHEAD)


# --- trimming order -----------------------------------------------------------------------


def test_a_prompt_within_the_limit_is_untouched():
    counter = _smollm2()
    ctx = _dialogue()
    fitted = budget.fit("dialogue", ctx, 100_000, counter.count_messages)
    assert fitted.trimmed == [] and fitted.messages == prompts.messages("dialogue", **ctx)


def test_dialogue_cuts_overlong_turns_before_dropping_anything():
    counter = _smollm2()
    ctx = _dialogue(recent_turns=[{"player_text": LONG_TURN, "npc_text": "Hm."}] * 3)
    full = counter.count_messages(prompts.messages("dialogue", **ctx))
    fitted = budget.fit("dialogue", ctx, full - 200, counter.count_messages)
    assert fitted.tokens <= full - 200
    kept = fitted.context
    assert len(kept["recent_turns"]) == 3 and len(kept["evidence"]) == 4
    assert all(t["player_text"].endswith(budget.MARK) and len(t["player_text"]) < len(LONG_TURN)
               for t in kept["recent_turns"])
    assert kept["npc"] == ctx["npc"] and kept["note"] == ctx["note"]
    assert ctx["recent_turns"][0]["player_text"] == LONG_TURN  # the caller's context is intact


def test_dialogue_drops_evidence_and_documents_before_turns_and_lore():
    counter = _smollm2()
    ctx = _dialogue()
    fitted = budget.fit("dialogue", ctx, _limit_between("dialogue", ctx, counter, 0.75),
                        counter.count_messages)
    kept = fitted.context
    assert len(kept["evidence"]) < 4 or len(kept["retrieved"]) < 3
    assert kept["evidence"] == ctx["evidence"][: len(kept["evidence"])]  # best first kept
    assert kept["retrieved"] == [(t, d) for t, d in kept["retrieved"]]
    assert len(kept["recent_turns"]) == 4
    assert kept["npc"] == ctx["npc"] and kept["note"] == ctx["note"]
    assert kept["player_text"] == ctx["player_text"]


def test_dialogue_drops_the_oldest_turns_first_and_keeps_the_persona_longest():
    counter = _smollm2()
    ctx = _dialogue()
    fitted = budget.fit("dialogue", ctx, _limit_between("dialogue", ctx, counter, 0.45),
                        counter.count_messages)
    kept = fitted.context
    assert kept["evidence"] == [] or len(kept["retrieved"]) <= 1
    turns = kept["recent_turns"]
    assert turns == ctx["recent_turns"][len(ctx["recent_turns"]) - len(turns):]
    assert kept["npc"]["content"].startswith(ctx["npc"]["content"][:100])
    assert kept["player_text"] == ctx["player_text"]


def test_an_emoji_player_line_is_cut_to_fit():
    counter = _smollm2()
    ctx = _dialogue(player_text=EMOJI)
    fitted = budget.fit("dialogue", ctx, 1800, counter.count_messages)
    assert fitted.tokens <= 1800
    assert fitted.context["player_text"].endswith(budget.MARK)
    assert fitted.context["player_text"].startswith(EMOJI[:50])


def test_analysis_cuts_the_turn_texts_and_keeps_the_entities():
    counter = _smollm2()
    entities = [{"key": f"e_{i}", "title": f"Entity {i}", "entity_type": "character"}
                for i in range(5)]
    ctx = {"npc_title": "Baker", "player_text": EMOJI, "npc_text": LONG_TURN,
           "entities": entities, "speaker": None, "hints": ""}
    fitted = budget.fit("analysis", ctx, 1300, counter.count_messages)
    assert fitted.tokens <= 1300
    assert fitted.context["entities"] == entities
    assert fitted.context["player_text"].endswith(budget.MARK)


def test_summary_drops_the_oldest_turns_after_cutting_them():
    counter = tokens.ByteCounter()
    turns = [{"npc": "Baker", "player_text": f"turn {i} " + "x" * 290, "npc_text": "y" * 300}
             for i in range(10)]
    ctx = {"player_name": "tester", "previous": "z" * 600, "turns": turns}
    fitted = budget.fit("summarize_session", ctx, 1500, counter.count_messages)
    kept = fitted.context["turns"]
    assert fitted.tokens <= 1500 and kept
    assert kept[-1]["player_text"].startswith("turn 9 ")  # the newest turn stays


def test_a_context_smaller_than_the_fixed_text_is_an_error():
    with pytest.raises(budget.PromptTooLong):
        budget.fit("analysis", {"npc_title": "B", "player_text": "hi", "npc_text": "",
                                "entities": [], "speaker": None, "hints": ""},
                   20, tokens.ByteCounter().count_messages)


LONG = {
    "dialogue": lambda: _dialogue(player_text=EMOJI, note=LONG_TURN * 2, cards=LONG_TURN,
                                  memories=LONG_TURN,
                                  recent_turns=[{"player_text": EMOJI[:1000],
                                                 "npc_text": LONG_TURN}] * 12),
    "analysis": lambda: {"npc_title": "Baker", "player_text": EMOJI, "npc_text": LONG_TURN * 5,
                         "entities": [{"key": f"e_{i}", "title": f"Entity {i}",
                                       "entity_type": "character"} for i in range(12)],
                         "speaker": None, "hints": LONG_TURN},
    "rewrite_note": lambda: {"title": "Baker", "lore": LONG_TURN[:1200],
                             "note": EMOJI[:1200], "event": LONG_TURN * 3},
    "consolidate_note": lambda: {"title": "Baker", "lore": LONG_TURN[:600], "note": EMOJI,
                                 "max_chars": 800},
    "create_entity": lambda: {"entity_type": "character", "creation_summary": EMOJI,
                              "names": ["Ann", "Bob"]},
    "simulate_world": lambda: {"world_title": "W", "elapsed": "2 hours", "now": "day 1",
                               "targets": [{"key": f"t{i}", "title": f"T{i}",
                                            "content": EMOJI[:300], "note": EMOJI[:300]}
                                           for i in range(3)],
                               "places": [{"key": "p", "title": "P"}],
                               "recent": [EMOJI[:120]] * 3},
    "summarize_session": lambda: {"player_name": "tester", "previous": EMOJI[:600],
                                  "turns": [{"npc": "Baker", "player_text": EMOJI[:300],
                                             "npc_text": EMOJI[:300]}] * 10},
    "judge_reply": lambda: {"npc_name": "Baker", "lore": LONG_TURN[:1200],
                            "player_text": EMOJI, "npc_text": EMOJI},
    "judge_consistency": lambda: {"npc_name": "Baker", "question": EMOJI, "first": EMOJI,
                                  "second": EMOJI},
}
MAX_TOKENS = {"dialogue": 80, "analysis": 700, "rewrite_note": 320, "consolidate_note": 266,
              "create_entity": 600, "simulate_world": 480, "summarize_session": 300,
              "judge_reply": 120, "judge_consistency": 100}


@pytest.mark.parametrize("tokenizer, context", [("", 1024), ("", 2048), ("", 8192),
                                                ("bytes", 2048), ("bytes", 8192)])
@pytest.mark.parametrize("template", sorted(LONG))
def test_every_prompt_fits_any_context(template, context, tokenizer):
    """Exact counts fit every prompt from 1024 tokens on; the byte bound (about four times
    the tokens of English text) needs 2048 for the analysis prompt's fixed text."""
    assert set(LONG) == set(budget.PLANS)
    with environment({"LLM_CONTEXT_TOKENS": str(context), "LLM_TOKENIZER": tokenizer}):
        model = ChatModel("maintenance")
        fit = calls.fit_prompt(model, template, MAX_TOKENS[template], **LONG[template]())
        assert fit.prompt_tokens == model.count_tokens(fit.messages)
        assert fit.prompt_tokens + fit.max_tokens + model.margin_tokens <= context
        assert fit.max_tokens == MAX_TOKENS[template] or context == 1024


def test_role_settings_override_the_shared_ones():
    with environment({"LLM_CONTEXT_TOKENS": "4096", "GENERATION_CONTEXT_TOKENS": "1024",
                      "ANALYSIS_TOKENIZER": "bytes"}):
        assert ChatModel("generation").context_tokens == 1024
        assert ChatModel("maintenance").context_tokens == 4096
        assert ChatModel("analysis").counter.name == "bytes"
    with environment({}):
        from settings import get_settings

        assert ChatModel("generation").context_tokens == get_settings().llm_n_ctx


# --- against the real model server ---------------------------------------------------------


def test_count_matches_the_servers_prompt_tokens(llm_server):
    counter = _smollm2()
    client = openai.OpenAI(base_url=llm_server, api_key="x")
    msgs = prompts.messages("dialogue", **_dialogue(player_text="Ist das Brot frisch? 🍞"))
    res = client.chat.completions.create(model="smollm2-135m-instruct", messages=msgs,
                                         max_tokens=1)
    assert counter.count_messages(msgs) == res.usage.prompt_tokens


def test_long_turns_do_not_break_the_npc(client, session_id):
    for _ in range(3):
        res = client.post(f"/v1/sessions/{session_id}/turns",
                          json={"npc_id": "baker_27", "player_text": WORDY_TURN})
        assert res.status_code == 200, res.text
    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": "baker_27", "player_text": "And the bread?"})
    assert res.status_code == 200, res.text
    assert res.json()["seq"] == 4
    # trimming changed only the prompt: the stored turns are whole
    stored = nearline.recent_turns(nearline.get_redis(), session_id, 10)
    assert [t["player_text"] for t in stored[:3]] == [WORDY_TURN] * 3


def test_an_emoji_event_is_accepted_and_the_npc_and_the_analysis_go_on(client, session_id,
                                                                       light_world):
    res = client.post(f"/v1/sessions/{session_id}/events",
                      json={"npc_id": "baker_27", "text": EMOJI})
    assert res.status_code == 201, res.text
    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": "baker_27", "player_text": "What was that?"})
    assert res.status_code == 200, res.text
    assert res.json()["npc_text"].strip()

    event = nearline.recent_turns(nearline.get_redis(), session_id, 10)[0]
    assert event["player_text"] == EMOJI  # stored whole
    with session_scope() as s:
        npc = s.scalar(select(LoreEntry).where(LoreEntry.world_id == light_world["id"],
                                               LoreEntry.key == "baker_27"))
        scope = turn_scope(s, npc, session_id, text=EMOJI)
        title = npc.title
        try:
            out, used = calls.analyze_turn(title, EMOJI, event.get("npc_text") or "", scope)
        except InvalidModelOutput:  # SmolLM2-135M's JSON may fail; the context did not
            return
    assert used > 0 and isinstance(out.updates, list)
