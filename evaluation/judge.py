"""The analysis model as judge: JSON verdicts under ``prompts/schemas/judge_*.json``.

The judge runs in the evaluating process on the ``analysis`` role (``ANALYSIS_*`` settings,
falling back to ``LLM_*``), through :meth:`inference.llm.ChatModel.complete_json`: broken JSON
is repaired, invalid output retried; a judge that still fails gives None (the reply then
counts as unjudged and is left out of the shares, and the report says how many).
"""

from __future__ import annotations

import logging
from typing import TypeVar

import prompts
from inference.calls import fit_prompt
from inference.llm import ModelError, chat_model
from prompts.outputs import ConsistencyVerdict, ReplyVerdict

log = logging.getLogger(__name__)

T = TypeVar("T", ConsistencyVerdict, ReplyVerdict)

LORE_CHARS = 1200  # the lore entry as the judge sees it (a small model's context is short)


def _verdict(template: str, output: type[T], max_tokens: int, **fields) -> T | None:
    """The analysis model's JSON verdict from ``prompts/templates/{template}.j2`` (fitted to
    the model's context, ``inference.calls.fit_prompt``) under
    ``prompts/schemas/{template}.json``; None (logged) when it gave none that validates."""
    model = chat_model("analysis")
    try:
        fit = fit_prompt(model, template, max_tokens, **fields)
        verdict, _ = model.complete_json(
            fit.messages, output, prompts.schema(template), max_tokens=fit.max_tokens,
            temperature=0.0, schema_name=template)
        return verdict
    except ModelError as exc:
        log.warning("judge gave no %s verdict: %s", template, exc)
        return None


def judge_reply(npc_name: str, lore: str, player_text: str, npc_text: str) -> ReplyVerdict | None:
    """Does ``npc_text`` contradict ``lore``, and what is its tone? None if the judge gave
    no valid verdict (model error or invalid output after retries)."""
    return _verdict("judge_reply", ReplyVerdict, 120, npc_name=npc_name,
                    lore=lore[:LORE_CHARS], player_text=player_text, npc_text=npc_text)


def judge_consistency(npc_name: str, question: str, first: str,
                      second: str) -> ConsistencyVerdict | None:
    """Do two replies to the same ``question`` agree? None if the judge gave no valid
    verdict."""
    return _verdict("judge_consistency", ConsistencyVerdict, 100, npc_name=npc_name,
                    question=question, first=first, second=second)
