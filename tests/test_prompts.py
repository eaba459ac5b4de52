"""Prompt templates (``prompts.messages``): every template renders a system and a user message
carrying its context, optional sections vanish, the dialogue prompt keeps a stable head for
prompt caches, and missing variables or unknown templates raise."""

from __future__ import annotations

from types import SimpleNamespace

import jinja2
import pytest

pytestmark = pytest.mark.pure


def _template_contexts() -> dict[str, dict]:
    npc = {"title": "Baker", "content": "A baker who rises before dawn."}
    return {
        "dialogue": dict(npc=npc, note="He lost his rolling pin.",
                         cards="Trust in the player: +20 of 100 (trusting).",
                         memories="The player came to town at dusk.\n- gift: A sack of rye flour.",
                         recent_turns=[{"player_text": "Hello there", "npc_text": "Fresh rolls!"}],
                         retrieved=[("Town Square", "The square in the middle of town.")],
                         player_text="Do you have rye bread?"),
        "analysis": dict(npc_title="Baker", player_text="I found a silver key.",
                         npc_text="Keep it away from the crypt.",
                         entities=[SimpleNamespace(key="baker_27", title="Baker", entity_type="character")],
                         hints="Open promises of the player: bring rye flour."),
        "rewrite_note": dict(title="Baker", lore="A baker who rises before dawn.",
                             note="He lost his rolling pin.", event="He found it under the oven."),
        "consolidate_note": dict(title="Baker", lore="A baker who rises before dawn.",
                                 note="[Day 1, 06:00] He lost his rolling pin.", max_chars=400),
        "create_entity": dict(entity_type="item", creation_summary="A silver key with a bat on it."),
        "summarize_session": dict(player_name="Ann", previous="Ann came to town at dusk.",
                                  turns=[{"npc": "Baker", "player_text": "Any rye bread?",
                                          "npc_text": "Fresh at dawn."},
                                         {"npc": "Baker", "speaker": "the smith",
                                          "player_text": "Two loaves.", "npc_text": ""}]),
        "simulate_world": dict(world_title="Possibly Vampires", elapsed="2 hours",
                               now="day 1, 14:00",
                               targets=[{"key": "baker_27", "title": "Baker",
                                         "content": "A baker who rises before dawn.",
                                         "note": "He lost his rolling pin."}],
                               places=[{"key": "town square_0", "title": "town square"}],
                               recent=["The player found a silver key."]),
        "judge_reply": dict(npc_name="Baker", lore="A baker who rises before dawn.",
                            player_text="When do you get up?", npc_text="At noon, lazily."),
        "judge_consistency": dict(npc_name="Baker", question="When do you get up?",
                                  first="Before dawn.", second="At noon."),
    }


# what each rendered template must carry from its context (system text, user text)
_EXPECTED = {
    "dialogue": (["Baker", "A baker who rises before dawn.", "He lost his rolling pin.",
                  "[What you remember about the player]\nTrust in the player: +20 of 100 (trusting).",
                  "Town Square: The square in the middle of town.", "Player: Hello there",
                  "Baker: Fresh rolls!",
                  "[The story so far and what stayed with you]\nThe player came to town at dusk.\n"
                  "- gift: A sack of rye flour."], ["Do you have rye bread?"]),
    "summarize_session": (["running summary"], [
        "Player: Ann", "Summary so far: Ann came to town at dusk.",
        "- Ann to Baker: Any rye bread? / Baker: Fresh at dawn.",
        "- the smith to Baker: Two loaves.\n", '{"summary": text}']),
    "analysis": ([], ["- baker_27: Baker (character)", "Player said to Baker: I found a silver key.",
                      "Baker answered: Keep it away from the crypt.",
                      "Known between the player and Baker: Open promises of the player: bring rye flour.",
                      'List "relationship"', 'List "quests"']),
    "rewrite_note": ([], ["[Entity]: Baker", "[Original Lore (Static)]: A baker who rises before dawn.",
                          "[Current Session Note]: He lost his rolling pin.",
                          "[New Event]: He found it under the oven."]),
    "consolidate_note": ([], ["[Entity]: Baker",
                              "[Current Session Note]: [Day 1, 06:00] He lost his rolling pin.",
                              "at most 400 characters", "Formerly (until ...)"]),
    "create_entity": ([], ["new item",
                           "[Creation Summary]: A silver key with a bat on it."]),
    "simulate_world": ([], ["World: Possibly Vampires",
                            "Time elapsed off-screen: 2 hours (it is now day 1, 14:00)",
                            "- baker_27: Baker: A baker who rises before dawn. Lately: He lost his rolling pin.",
                            "- town square_0: town square", "during these 2 hours",
                            "- The player found a silver key."]),
    "judge_reply": ([], ["Character: Baker", "Lore: A baker who rises before dawn.",
                         "The player said: When do you get up?", "Baker replied: At noon, lazily.",
                         '"lore": "contradicts"', "hostile, cold, neutral, courteous, warm, cheerful"]),
    "judge_consistency": ([], ["The player asked Baker: When do you get up?",
                               "First answer: Before dawn.", "Second answer: At noon.",
                               '"agree": "no"']),
}


def test_every_template_is_covered():
    import prompts

    names = sorted(p.stem for p in (prompts.HERE / "templates").glob("*.j2"))
    assert names == sorted(_template_contexts())


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_messages_render_system_and_user(name):
    import prompts

    msgs = prompts.messages(name, **_template_contexts()[name])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert all(m["content"] == m["content"].strip() and m["content"] for m in msgs)
    system, user = msgs[0]["content"], msgs[1]["content"]
    want_system, want_user = _EXPECTED[name]
    for text in want_system:
        assert text in system, (text, system)
    for text in want_user:
        assert text in user, (text, user)
    assert "{{" not in system + user and "{%" not in system + user


def test_dialogue_user_message_is_the_player_text_and_optional_sections_vanish():
    import prompts

    msgs = prompts.messages("dialogue", npc={"title": "Baker", "content": "A baker."}, note="",
                            cards="", memories="", recent_turns=[], retrieved=[],
                            player_text="Hi!")
    assert msgs[1] == {"role": "user", "content": "Hi!"}
    assert "[What has happened" not in msgs[0]["content"]
    assert "[What you remember about the player]" not in msgs[0]["content"]
    assert "[Things you know about]" not in msgs[0]["content"]
    assert "[Recent conversation]" not in msgs[0]["content"]
    assert "[The story so far" not in msgs[0]["content"]


def test_dialogue_prompt_of_the_next_turn_shares_the_head_up_to_the_recent_turns():
    """Stable parts first, per-turn parts last: the next turn's prompt starts with the whole
    previous prompt up to the end of its recent turns (a prompt cache reuses that head)."""
    import prompts

    npc = {"title": "Baker", "content": "A baker of Saltmere who owes the miller."}
    common = {"npc": npc, "note": "The player bought bread.", "cards": "Trust: friendly.",
              "memories": "The player arrived at dawn."}
    turn1 = {"player_text": "Any news?", "npc_text": "The mill burned."}
    first = prompts.messages("dialogue", **common, recent_turns=[turn1],
                             retrieved=[("Mill", "The mill by the river.")],
                             evidence=["[day 1, 07:30] Player: I saw smoke."],
                             player_text="Who did it?")[0]["content"]
    second = prompts.messages("dialogue", **common,
                              recent_turns=[turn1, {"player_text": "Who did it?",
                                                    "npc_text": "Nobody knows."}],
                              retrieved=[("Lighthouse", "The old lighthouse.")],
                              evidence=["[day 1, 08:00] Player: Strange lights."],
                              player_text="And the lighthouse?")[0]["content"]
    head = first[: first.index("[Things you know about]")]
    assert second.startswith(head.rstrip())
    for stable in ("[Who you are]", "[What has happened", "[What you remember",
                   "[The story so far"):
        assert first.index(stable) < first.index("[Recent conversation]")
    assert (first.index("[Recent conversation]") < first.index("[Things you know about]")
            < first.index("[What was said earlier"))


def test_analysis_without_hints_leaves_the_known_line_out():
    import prompts

    ctx = dict(_template_contexts()["analysis"], hints="")
    assert "Known between" not in prompts.messages("analysis", **ctx)[1]["content"]


def test_rewrite_note_without_note_says_none_yet():
    import prompts

    ctx = dict(_template_contexts()["rewrite_note"], note="")
    assert "[Current Session Note]: (none yet)" in prompts.messages("rewrite_note", **ctx)[1]["content"]


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_messages_missing_variable_raises(name):
    import prompts

    ctx = _template_contexts()[name]
    for missing in ctx:
        partial = {k: v for k, v in ctx.items() if k != missing}
        with pytest.raises(jinja2.UndefinedError):
            prompts.messages(name, **partial)


def test_messages_unknown_template_raises():
    import prompts

    with pytest.raises(jinja2.TemplateNotFound):
        prompts.messages("no_such_template")
