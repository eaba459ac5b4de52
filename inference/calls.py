"""One function per prompt: render the template, call the role's model, validate the answer.

These are the model-facing halves of the pipeline steps; ``memory/`` takes them as plain
callables, so the domain logic runs the same with any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import prompts
from inference.llm import chat_model
from prompts.outputs import AnalysisOutput, CreatedEntity, SessionSummary, SimulationOutput

if TYPE_CHECKING:
    from inference.lora.routing import ModelRoute


@dataclass(frozen=True)
class Reply:
    """An NPC reply: ``text``, ``tokens`` used, and the ``model`` that answered."""

    text: str
    tokens: int
    model: str


def generate_reply(npc: dict, note: str, recent: list[dict], retrieved: list[tuple[str, str]],
                   player_text: str, max_tokens: int = 80, cards: str = "",
                   memories: str = "", route: ModelRoute | None = None,
                   evidence: list[str] | None = None) -> Reply:
    """The NPC's in-character reply (generation role).

    Args:
        npc: cached lore entry ``{title, content, ...}``.
        note: the NPC's session note ('' when none).
        recent: recent turns ``[{player_text, npc_text}]``, oldest first.
        retrieved: ``[(title, document)]`` from the vector index.
        cards: the NPC's relationship and quest cards as prompt text, already within its
            budget (``memory.cards.render_cards``; '' when none).
        memories: the session summary and the NPC's salient memories, already within their
            budget (``memory.summaries.render_memories``; '' when none).
        route: the NPC's model route (``inference.lora.routing.resolve``, purpose
            ``dialogue``): its archetype's adapter; None: the generation role's model.
        evidence: earlier utterances of the session as prompt lines
            (``memory.evidence.prompt_line``: in-game time, speaker, text), already within
            the retrieval budget; None or []: none.

    Raises:
        inference.llm.ModelError: the model failed.
    """
    model = route.chat_model() if route is not None else chat_model("generation")
    msgs = prompts.messages("dialogue", npc=npc, note=note, cards=cards, memories=memories,
                            recent_turns=recent, evidence=list(evidence or []),
                            retrieved=[(t, d[:400]) for t, d in retrieved], player_text=player_text)
    done = model.complete(msgs, max_tokens=max_tokens, temperature=0.7)
    text = done.text.strip()
    prefix = f"{npc['title']}:"
    if text.startswith(prefix):
        text = text[len(prefix):].strip()
    return Reply(text, done.tokens, model.model)


def analyze_turn(npc_title: str, player_text: str, npc_text: str,
                 entities: list, speaker: str | None = None,
                 hints: str = "", route: ModelRoute | None = None) -> tuple[AnalysisOutput, int]:
    """Updates and creations implied by one turn (analysis role), ids limited to ``entities``,
    and the turn's relationship and quest events for the NPC's cards (seed 000).
    ``speaker`` names who said ``player_text`` when it was not the player; ``npc_text`` is ""
    when the NPC did not answer. ``hints``: open promises and active quests already on the
    cards (``memory.cards.analysis_hints``). ``route``: the NPC's model route (purpose
    ``analysis``: its archetype's ``social_dynamics`` adapter on vLLM); None: the role's model.

    Raises:
        inference.llm.InvalidModelOutput: no valid answer after retries.
        inference.llm.ModelError: the model failed.
    """
    schema = prompts.schema("analysis", {"lore_entry_id": [e.key for e in entities]})
    msgs = prompts.messages("analysis", npc_title=npc_title, player_text=player_text,
                            npc_text=npc_text, entities=entities, speaker=speaker,
                            hints=hints)
    model = route.chat_model() if route is not None else chat_model("analysis")
    return model.complete_json(msgs, AnalysisOutput, schema, max_tokens=700,
                               temperature=0.2, schema_name="analysis")


def _complete_sentences(done) -> str:
    text = done.text
    if done.finish_reason == "length":  # keep the complete sentences of a cut-off answer
        end = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"))
        text = text[: end + 1] if end > 0 else text
    return text


def rewrite_note(title: str, lore: str, note: str, event: str) -> tuple[str, int]:
    """The rewritten session note (maintenance role): the previous note with the event folded
    in, superseded facts kept as "Formerly (until <time>)". Output cut at the token limit
    keeps its complete sentences. The caller checks it (``memory.retention``): this is a
    proposal, not a write.

    Returns:
        ``(text, tokens used)``.

    Raises:
        inference.llm.ModelError: the model failed.
    """
    msgs = prompts.messages("rewrite_note", title=title, lore=lore[:1200], note=note[:1200],
                            event=event)
    done = chat_model("maintenance").complete(msgs, max_tokens=320, temperature=0.3)
    return _complete_sentences(done), done.tokens


def consolidate_note(title: str, lore: str, note: str, max_chars: int) -> tuple[str, int]:
    """A shorter version of a session note that outgrew ``max_chars`` (maintenance role),
    keeping its names, numbers, times and past facts; checked by the caller like a rewrite.

    Returns:
        ``(text, tokens used)``.

    Raises:
        inference.llm.ModelError: the model failed.
    """
    msgs = prompts.messages("consolidate_note", title=title, lore=lore[:600], note=note,
                            max_chars=max_chars)
    done = chat_model("maintenance").complete(msgs, max_tokens=max(64, max_chars // 3),
                                              temperature=0.2)
    return _complete_sentences(done), done.tokens


def create_lore(entity_type: str, creation_summary: str,
                names: list[str] | None = None) -> tuple[CreatedEntity, int]:
    """A new lore entry ``{title, content, tags}`` from a summary (maintenance role).
    ``names``: the titles allowed (the new names found in the source text), given to the
    model in the prompt and as the ``enum`` of ``title`` in the JSON schema; None: any title.

    Raises:
        inference.llm.InvalidModelOutput: no valid answer after retries.
    """
    msgs = prompts.messages("create_entity", entity_type=entity_type,
                            creation_summary=creation_summary, names=list(names or []))
    schema = prompts.schema("creation", {"title": list(names)} if names else None)
    if names:  # the enum alone decides; a pattern could contradict a name's spelling
        for bound in ("pattern", "minLength", "maxLength"):
            schema["properties"]["title"].pop(bound, None)
    return chat_model("maintenance").complete_json(msgs, CreatedEntity, schema,
                                                   max_tokens=600, temperature=0.4,
                                                   schema_name="lore_entry")


def simulation_messages(world_title: str, elapsed: str, now: str, targets: list[dict],
                        places: list[dict], recent: list[str]) -> list[dict]:
    """The simulation prompt's chat messages (see ``simulate``)."""
    return prompts.messages("simulate_world", world_title=world_title[:200], elapsed=elapsed,
                            now=now, targets=targets, places=places, recent=recent)


def simulate(world_title: str, elapsed: str, now: str, targets: list[dict], places: list[dict],
             recent: list[str], max_tokens: int = 700,
             route: ModelRoute | None = None) -> tuple[SimulationOutput, int]:
    """What off-screen characters did (maintenance role, seed 004's simulation prompt).

    Args:
        elapsed: in-game time since the last tick, in words ("2 hours").
        now: the in-game time after it ("day 1, 14:00").
        targets: ``[{key, title, content, note}]``; the answer may only name these keys and
            the ``places`` (``[{key, title}]``), an enum in the JSON schema.
        max_tokens: completion budget of the call.
        route: the model route (purpose ``simulation``: the targets' archetype's
            ``action_policy`` adapter); None: the maintenance role's model.

    Returns:
        The parsed output and the tokens the call used (prompt + completion).

    Raises:
        inference.llm.InvalidModelOutput: no valid answer after retries.
    """
    ids = [t["key"] for t in targets] + [p["key"] for p in places]
    schema = prompts.schema("simulation", {"lore_entry_id": ids})
    # one update per target (and place) at most: a small model otherwise repeats items
    schema["properties"]["updates"]["maxItems"] = min(len(ids), schema["properties"]["updates"]["maxItems"])
    msgs = simulation_messages(world_title, elapsed, now, targets, places, recent)
    model = route.chat_model() if route is not None else chat_model("maintenance")
    return model.complete_json(msgs, SimulationOutput, schema, max_tokens=max_tokens,
                               temperature=0.5, schema_name="simulation")


def summarize_session(player_name: str, previous: str, turns: list[dict],
                      max_tokens: int = 300) -> tuple[SessionSummary, int]:
    """The rolling session summary, 300-600 characters (maintenance role; seed 001's Level 2).

    Args:
        previous: the last summary ('' when none).
        turns: ``[{npc, player_text, npc_text, speaker?}]`` since it, oldest first (texts
            are clipped to 300 characters here).

    Raises:
        inference.llm.InvalidModelOutput: no valid answer after retries.
        inference.llm.ModelError: the model failed.
    """
    clipped = [{**t, "player_text": t["player_text"][:300], "npc_text": (t.get("npc_text") or "")[:300]}
               for t in turns]
    msgs = prompts.messages("summarize_session", player_name=player_name[:200], previous=previous[:600], turns=clipped)
    return chat_model("maintenance").complete_json(msgs, SessionSummary, prompts.schema("summary"),
                                                   max_tokens=max_tokens, temperature=0.3,
                                                   schema_name="session_summary")
