"""The lore-consistency guard of played turns (setting ``LORE_GUARD``).

After the model's reply and before it is returned, :func:`guard_reply` checks it against the
NPC's base lore and the documents the turn retrieved: first the entity and negation rules of
``memory.canon``, then, with ``LORE_GUARD=rules+model`` and when the rules found nothing, the
analysis model (``inference.calls.check_canon``). On a contradiction the reply is generated
once more with the contradicted fact stated in the prompt (``canon`` of the dialogue
template), and that second reply is the answer, whatever it says (it is checked by the rules
again and ``resolved`` tells whether it passed). Streamed replies (:func:`check_streamed`)
are checked after the last token and flagged, not generated again: the player has already
read them.

Every check gives the turn response's ``canon`` object::

    {"checked": true, "contradiction": "<fact> (reply: <sentence>)" | null,
     "by": "rules" | "model" | null, "regenerated": bool, "resolved": bool | null}

(``null`` when ``LORE_GUARD=off``), counts a contradiction in ``npc_canon_contradictions``
and logs it (``lore guard: contradiction``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from inference import calls
from inference.llm import ModelError
from memory import canon
from settings import get_settings
from workers import metrics

log = logging.getLogger(__name__)


def _find(prompt: dict, text: str, mode: str) -> tuple[list[canon.Contradiction], str | None,
                                                      str | None]:
    """(rule contradictions, the first described, the pass that found it) of ``text``."""
    npc = prompt["npc"]
    facts = canon.extract_facts(npc, prompt["retrieved"], prompt.get("note") or "")
    found = canon.check_reply(text, facts, npc.get("title") or "")
    if found:
        return found, found[0].describe(), "rules"
    if mode == "rules+model":
        lore = "\n".join([npc.get("content") or ""]
                         + [f"{t}: {d}" for t, d in prompt["retrieved"]])
        try:
            reason = calls.check_canon(npc.get("title") or "", lore, prompt["player_text"], text)
        except ModelError as exc:  # the guard never fails a turn
            log.warning("lore guard: model pass failed: %s", exc)
            reason = None
        if reason:
            return [], reason, "model"
    return [], None, None


def guard_reply(prompt: dict, reply: calls.Reply,
                regenerate: Callable[[str], calls.Reply]) -> tuple[calls.Reply, dict | None]:
    """Check a generated reply and, on a contradiction, generate it once more.

    Args:
        prompt: the turn's ``generate_reply`` keyword arguments (``npc``, ``note``,
            ``retrieved`` ``[(title, text)]``, ``player_text``...).
        reply: the model's reply.
        regenerate: generates the reply again with the given ``canon`` prompt text (the
            contradicted facts, ``memory.canon.fact_prompt``); may raise ``ModelError``.
    Returns:
        ``(reply to answer, canon object)``; the canon object is None when the guard is off.
    Raises:
        inference.llm.ModelError: the regeneration failed (the turn fails as any model
            failure does).
    """
    mode = get_settings().lore_guard
    if mode == "off":
        return reply, None
    found, described, by = _find(prompt, reply.text, mode)
    if described is None:
        return reply, {"checked": True, "contradiction": None, "by": None,
                       "regenerated": False, "resolved": None}
    facts = canon.fact_prompt(found) if found else f"- {described}"
    second = regenerate(facts)
    left = canon.check_reply(second.text, canon.extract_facts(
        prompt["npc"], prompt["retrieved"], prompt.get("note") or ""),
        prompt["npc"].get("title") or "")
    metrics.CANON_FLAGS.labels(by, "regenerated").inc()
    log.warning("lore guard: contradiction", extra={
        "contradiction": described, "by": by, "regenerated": True, "resolved": not left})
    return second, {"checked": True, "contradiction": described, "by": by,
                    "regenerated": True, "resolved": not left}


def check_streamed(prompt: dict, text: str) -> dict | None:
    """Check a streamed reply after its last token: flag it, never generate it again.

    Returns:
        The canon object (``regenerated`` false, ``resolved`` null) or None when the guard is
        off.
    """
    mode = get_settings().lore_guard
    if mode == "off":
        return None
    _found, described, by = _find(prompt, text, mode)
    if described is not None:
        metrics.CANON_FLAGS.labels(by, "flagged").inc()
        log.warning("lore guard: contradiction", extra={
            "contradiction": described, "by": by, "regenerated": False, "stream": True})
    return {"checked": True, "contradiction": described, "by": by, "regenerated": False,
            "resolved": None}
