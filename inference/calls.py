"""One function per prompt: render the template, call the role's model, validate the answer.

These are the model-facing halves of the pipeline steps; ``memory/`` takes them as plain
callables, so the domain logic runs the same with any backend.

Every prompt goes through :func:`fit_prompt`: it is rendered within the model's context
window less the completion budget (``prompts.budget``, counted by ``inference.tokens``), so
no input length can make a call exceed the context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import prompts
from inference.llm import ChatModel, ModelError, TokenStream, chat_model
from prompts import budget
from prompts.outputs import (AnalysisOutput, CreatedEntity, ReplyVerdict, SessionSummary,
                             SimulationOutput)

if TYPE_CHECKING:
    from inference.lora.routing import ModelRoute


log = logging.getLogger(__name__)

MIN_COMPLETION_SHARE = 4
"""When even the most trimmed prompt leaves less than ``max_tokens`` of the context, the
completion budget may shrink to ``max_tokens // MIN_COMPLETION_SHARE`` (16 at least)."""


@dataclass(frozen=True)
class Fit:
    """A prompt fitted to a model: ``messages``, their ``prompt_tokens`` as counted, the
    call's ``max_tokens`` (the asked one unless the context could not hold it),
    ``trimmed``, what was cut (``prompts.budget.Fitted.trimmed``; [] when nothing), and the
    template ``context`` as rendered (trimmed values in place of the cut ones)."""

    messages: list[dict[str, str]]
    prompt_tokens: int
    max_tokens: int
    trimmed: list[str]
    context: dict


def fit_prompt(model: ChatModel, template: str, max_tokens: int, **context) -> Fit:
    """Render ``template`` for ``model`` so that prompt plus ``max_tokens`` fit its context.

    The prompt is trimmed by ``prompts.budget.PLANS[template]`` to
    ``model.prompt_limit(max_tokens)`` tokens (``model.count_tokens``). If even the most
    trimmed prompt does not fit, the completion budget shrinks (not below
    ``max_tokens // MIN_COMPLETION_SHARE``, 16 at least) to the room left.

    Raises:
        inference.llm.ModelError: the prompt cannot fit the context even so (a context window
            smaller than the template's fixed text), or the tokenizer cannot be loaded.
    """
    try:
        count = model.count_tokens
        try:
            fitted = budget.fit(template, context, model.prompt_limit(max_tokens), count)
        except budget.PromptTooLong:
            least = min(max_tokens, max(16, max_tokens // MIN_COMPLETION_SHARE))
            fitted = budget.fit(template, context, model.prompt_limit(least), count)
            max_tokens = min(max_tokens, model.context_tokens - model.margin_tokens
                             - fitted.tokens)
    except budget.PromptTooLong as exc:
        raise ModelError(f"{model.role} model: {exc} (context {model.context_tokens} tokens, "
                         f"completion {max_tokens}, counted by {model.counter.name}; a "
                         "larger context or the model's tokenizer, LLM_TOKENIZER, may fit "
                         "it)") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{model.role} model: cannot count prompt tokens: "
                         f"{type(exc).__name__}: {exc}") from exc
    if fitted.trimmed:
        log.info("prompt %s trimmed to %d tokens (%s, context %d, completion %d): %s",
                 template, fitted.tokens, model.counter.name, model.context_tokens, max_tokens,
                 "; ".join(fitted.trimmed))
    return Fit(fitted.messages, fitted.tokens, max_tokens, fitted.trimmed, fitted.context)


@dataclass(frozen=True)
class Reply:
    """An NPC reply: ``text``, ``tokens`` used, the ``model`` that answered, and what of the
    retrieved context the prompt held after fitting it to the context window:
    ``retrieved`` ``[(title, document)]`` and ``evidence`` lines (None: not known)."""

    text: str
    tokens: int
    model: str
    retrieved: list[tuple[str, str]] | None = None
    evidence: list[str] | None = None


def generate_reply(npc: dict, note: str, recent: list[dict], retrieved: list[tuple[str, str]],
                   player_text: str, max_tokens: int = 80, cards: str = "",
                   memories: str = "", route: ModelRoute | None = None,
                   evidence: list[str] | None = None, canon: str = "") -> Reply:
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
        canon: facts of the lore the reply must not contradict, as prompt lines
            (``memory.canon.fact_prompt``; set when the lore guard asks again); '' none.

    Raises:
        inference.llm.ModelError: the model failed.
    """
    model = route.chat_model() if route is not None else chat_model("generation")
    fit = _dialogue_prompt(model, max_tokens, npc, note, recent, retrieved, player_text, cards,
                           memories, evidence, canon)
    done = model.complete(fit.messages, max_tokens=fit.max_tokens, temperature=0.7)
    text = done.text.strip()
    prefix = f"{npc['title']}:"
    if text.startswith(prefix):
        text = text[len(prefix):].strip()
    return Reply(text, done.tokens, model.model, fit.context["retrieved"],
                 fit.context["evidence"])


def _dialogue_prompt(model: ChatModel, max_tokens: int, npc: dict, note: str,
                     recent: list[dict], retrieved: list[tuple[str, str]], player_text: str,
                     cards: str, memories: str, evidence: list[str] | None,
                     canon: str = "") -> Fit:
    """The dialogue prompt fitted to ``model`` (``generate_reply`` and ``stream_reply``)."""
    return fit_prompt(model, "dialogue", max_tokens, npc=npc, note=note, cards=cards,
                      memories=memories, recent_turns=recent, evidence=list(evidence or []),
                      retrieved=[(t, d[:400]) for t, d in retrieved], player_text=player_text,
                      canon=canon[:600])


class ReplyStream:
    """The NPC's reply as ``str`` deltas while the model generates it (``stream_reply``).

    The deltas are cleaned as :func:`generate_reply` cleans a whole reply: leading
    whitespace and a leading ``"<NPC name>:"`` are dropped, and whitespace at the end of the
    reply is never sent (whitespace is held back until more text follows), so the deltas
    joined are exactly :attr:`text`. After the last delta, :meth:`reply` gives the
    :class:`Reply` (tokens as ``inference.llm.TokenStream`` counts them). Iterating may raise
    ``inference.llm.ModelError`` (the model failed mid-way); :meth:`close` stops early.
    """

    def __init__(self, tokens: TokenStream, npc_title: str, fit: Fit | None = None):
        self._tokens = tokens
        self._fit = fit
        self._prefix = f"{npc_title}:"
        self._head = ""  # text before the prefix decision
        self._started = False  # prefix decided
        self._pending = ""  # trailing whitespace held back
        self._sent: list[str] = []

    @property
    def model(self) -> str:
        """The model the call named."""
        return self._tokens.model

    @property
    def text(self) -> str:
        """The cleaned text sent so far."""
        return "".join(self._sent)

    def __iter__(self) -> ReplyStream:
        return self

    def _emit(self, text: str) -> str:
        text = self._pending + text
        if not self._sent:  # nothing sent yet: no leading whitespace (after a prefix too)
            text = text.lstrip()
        body = text.rstrip()
        self._pending = text[len(body):]
        if body:
            self._sent.append(body)
        return body

    def __next__(self) -> str:
        while True:
            try:
                delta = next(self._tokens)
            except StopIteration:
                if not self._started and self._head:  # the reply was shorter than the prefix
                    self._started = True
                    head = self._head.strip()
                    head = "" if head == self._prefix else head
                    if head:
                        self._sent.append(head)
                        return head
                raise
            if self._started:
                out = self._emit(delta)
            else:
                self._head += delta
                head = self._head.lstrip()
                if not head or (len(head) < len(self._prefix) and self._prefix.startswith(head)):
                    continue  # could still be the name prefix
                self._started = True
                if head.startswith(self._prefix):
                    head = head[len(self._prefix):].lstrip()
                out = self._emit(head) if head else ""
            if out:
                return out

    def reply(self) -> Reply:
        """The whole reply (call after the last delta)."""
        done = self._tokens.completion
        ctx = self._fit.context if self._fit is not None else {}
        return Reply(self.text, done.tokens if done is not None else 0, self.model,
                     ctx.get("retrieved"), ctx.get("evidence"))

    def close(self) -> None:
        """Stop reading the model's stream (``TokenStream.close``)."""
        self._tokens.close()


def stream_reply(npc: dict, note: str, recent: list[dict], retrieved: list[tuple[str, str]],
                 player_text: str, max_tokens: int = 80, cards: str = "",
                 memories: str = "", route: ModelRoute | None = None,
                 evidence: list[str] | None = None, canon: str = "") -> ReplyStream:
    """:func:`generate_reply` streamed: the same prompt and model, the reply as deltas.

    The request is sent here and read to the model's first token (``ChatModel.stream``), so
    a model that fails before answering raises here. Arguments as :func:`generate_reply`.

    Raises:
        inference.llm.ModelError: the model failed before its first token.
    """
    model = route.chat_model() if route is not None else chat_model("generation")
    fit = _dialogue_prompt(model, max_tokens, npc, note, recent, retrieved, player_text, cards,
                           memories, evidence, canon)
    return ReplyStream(model.stream(fit.messages, max_tokens=fit.max_tokens, temperature=0.7),
                       npc["title"], fit)


def check_canon(npc_title: str, canon: str, player_text: str, npc_text: str) -> str | None:
    """The lore guard's second pass (``LORE_GUARD=rules+model``): the analysis model judges
    whether ``npc_text`` states something ``canon`` (the NPC's base lore and the turn's
    retrieved documents, as text; the first 1200 characters are sent) rules out, with the
    evaluation judge's prompt and schema (``judge_reply``).

    Returns:
        The model's one-sentence reason when it says the reply contradicts the canon; None
        when it says consistent.

    Raises:
        inference.llm.ModelError: the model failed or gave no valid verdict.
    """
    model = chat_model("analysis")
    fit = fit_prompt(model, "judge_reply", 120, npc_name=npc_title, lore=canon[:1200],
                     player_text=player_text, npc_text=npc_text)
    verdict, _ = model.complete_json(fit.messages, ReplyVerdict, prompts.schema("judge_reply"),
                                     max_tokens=fit.max_tokens, temperature=0.0,
                                     schema_name="judge_reply")
    return verdict.reason if verdict.lore == "contradicts" else None


def analyze_turn(npc_title: str | None, player_text: str, npc_text: str,
                 entities: list, speaker: str | None = None,
                 hints: str = "", route: ModelRoute | None = None,
                 kind: str | None = None) -> tuple[AnalysisOutput, int]:
    """Updates and creations implied by one turn (analysis role), ids limited to ``entities``,
    and the turn's relationship and quest events for the NPC's cards.
    ``speaker`` names who said ``player_text`` when it was not the player; ``npc_text`` is ""
    when the NPC did not answer. ``hints``: open promises and active quests already on the
    cards (``memory.cards.analysis_hints``). ``kind``: ``narration`` or ``game`` presents
    ``player_text`` as what happened, said by no one; ``npc_title`` None: addressed to no NPC
    (no card events are asked for). ``route``: the NPC's model route (purpose ``analysis``:
    its archetype's ``social_dynamics`` adapter on vLLM); None: the role's model.

    Raises:
        inference.llm.InvalidModelOutput: no valid answer after retries.
        inference.llm.ModelError: the model failed.
    """
    schema = prompts.schema("analysis", {"lore_entry_id": [e.key for e in entities]})
    model = route.chat_model() if route is not None else chat_model("analysis")
    fit = fit_prompt(model, "analysis", 700, npc_title=npc_title, player_text=player_text,
                     npc_text=npc_text, entities=list(entities), speaker=speaker, hints=hints,
                     kind=kind)
    return model.complete_json(fit.messages, AnalysisOutput, schema, max_tokens=fit.max_tokens,
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
    model = chat_model("maintenance")
    fit = fit_prompt(model, "rewrite_note", 320, title=title, lore=lore[:1200],
                     note=note[:1200], event=event)
    done = model.complete(fit.messages, max_tokens=fit.max_tokens, temperature=0.3)
    return _complete_sentences(done), done.tokens


def consolidate_note(title: str, lore: str, note: str, max_chars: int) -> tuple[str, int]:
    """A shorter version of a session note that outgrew ``max_chars`` (maintenance role),
    keeping its names, numbers, times and past facts; checked by the caller like a rewrite.

    Returns:
        ``(text, tokens used)``.

    Raises:
        inference.llm.ModelError: the model failed.
    """
    model = chat_model("maintenance")
    fit = fit_prompt(model, "consolidate_note", max(64, max_chars // 3), title=title,
                     lore=lore[:600], note=note, max_chars=max_chars)
    done = model.complete(fit.messages, max_tokens=fit.max_tokens, temperature=0.2)
    return _complete_sentences(done), done.tokens


def create_lore(entity_type: str, creation_summary: str,
                names: list[str] | None = None) -> tuple[CreatedEntity, int]:
    """A new lore entry ``{title, content, tags}`` from a summary (maintenance role).
    ``names``: the titles allowed (the new names found in the source text), given to the
    model in the prompt and as the ``enum`` of ``title`` in the JSON schema; None: any title.

    Raises:
        inference.llm.InvalidModelOutput: no valid answer after retries.
    """
    model = chat_model("maintenance")
    fit = fit_prompt(model, "create_entity", 600, entity_type=entity_type,
                     creation_summary=creation_summary, names=list(names or []))
    schema = prompts.schema("creation", {"title": list(names)} if names else None)
    if names:  # the enum alone decides; a pattern could contradict a name's spelling
        for bound in ("pattern", "minLength", "maxLength"):
            schema["properties"]["title"].pop(bound, None)
    return model.complete_json(fit.messages, CreatedEntity, schema,
                               max_tokens=fit.max_tokens, temperature=0.4,
                               schema_name="lore_entry")


def simulation_messages(world_title: str, elapsed: str, now: str, targets: list[dict],
                        places: list[dict], recent: list[str]) -> list[dict]:
    """The simulation prompt's chat messages (see ``simulate``)."""
    return prompts.messages("simulate_world", world_title=world_title[:200], elapsed=elapsed,
                            now=now, targets=targets, places=places, recent=recent)


def simulate(world_title: str, elapsed: str, now: str, targets: list[dict], places: list[dict],
             recent: list[str], max_tokens: int = 700,
             route: ModelRoute | None = None) -> tuple[SimulationOutput, int]:
    """What off-screen characters did (maintenance role, ``simulate_world.j2``).

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
    model = route.chat_model() if route is not None else chat_model("maintenance")
    fit = fit_prompt(model, "simulate_world", max_tokens, world_title=world_title[:200],
                     elapsed=elapsed, now=now, targets=targets, places=places, recent=recent)
    return model.complete_json(fit.messages, SimulationOutput, schema,
                               max_tokens=fit.max_tokens, temperature=0.5,
                               schema_name="simulation")


def summarize_session(player_name: str, previous: str, turns: list[dict],
                      max_tokens: int = 300) -> tuple[SessionSummary, int]:
    """The rolling session summary, 300-600 characters (maintenance role; kept in
    Redis, level 2 of the memory tiers).

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
    model = chat_model("maintenance")
    fit = fit_prompt(model, "summarize_session", max_tokens, player_name=player_name[:200],
                     previous=previous[:600], turns=clipped)
    return model.complete_json(fit.messages, SessionSummary, prompts.schema("summary"),
                               max_tokens=fit.max_tokens, temperature=0.3,
                               schema_name="session_summary")
