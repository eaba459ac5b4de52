"""Prompt budgets: render a template so that its messages fit a token limit.

Each template has an ordered list of trimming steps (:data:`PLANS`), least important first.
:func:`fit` renders the template with its full context; while the messages count more tokens
than the limit, it applies the next step as far as needed and no further:

- :class:`Clip` shortens a text field (or that field of every item of a list) to the longest
  length that fits, not below ``floor`` characters; a shortened text ends in :data:`MARK`.
  On a list, one cap applies to every item, so only the longest items are cut.
- :class:`Drop` removes items of a list one at a time, oldest (first) or last first, down to
  ``keep`` items.

Trimming changes only the context of this one rendering: stored turns, notes and evidence
are untouched. Token counts come from the caller (``inference.tokens``), so this module
knows no tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import prompts

MARK = " [...]"
"""Appended to a shortened text."""

Messages = list[dict[str, str]]
Counter = Callable[[Messages], int]


class PromptTooLong(ValueError):
    """The template's messages exceed the limit even with every trimming step applied.

    ``tokens`` is the count of the most trimmed rendering, ``limit`` the limit.
    """

    def __init__(self, template: str, tokens: int, limit: int):
        super().__init__(f"prompt {template!r} needs {tokens} tokens even trimmed; "
                         f"the limit is {limit}")
        self.template = template
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True)
class Clip:
    """Shorten text field ``path`` to at least ``floor`` characters.

    ``path``: a context key (``"note"``), a key of a dict value (``"npc.content"``), or a
    list with a key of each item (``"recent_turns[].player_text"``; an ``int`` key indexes a
    tuple item, ``"retrieved[].1"``; ``"evidence[]"`` the items themselves).
    """

    path: str
    floor: int = 0


@dataclass(frozen=True)
class Drop:
    """Remove items of list field ``path``, down to ``keep`` items: the first (oldest)
    items first, or with ``last_first`` the last ones (lists ordered best first)."""

    path: str
    keep: int = 0
    last_first: bool = False


Step = Clip | Drop

PLANS: dict[str, tuple[Step, ...]] = {
    # the NPC's reply: overlong recent turns are cut first, then the least relevant
    # retrieved evidence and documents, older recent turns, memories and cards; the
    # NPC's own lore, its session note and the player's line go last
    "dialogue": (
        Clip("recent_turns[].player_text", 400), Clip("recent_turns[].npc_text", 400),
        Clip("evidence[]", 200), Clip("retrieved[].1", 200),
        Drop("evidence", keep=2, last_first=True), Drop("retrieved", keep=1, last_first=True),
        Drop("recent_turns", keep=2), Clip("player_text", 800),
        Clip("memories", 200), Clip("cards", 200),
        Clip("recent_turns[].player_text", 120), Clip("recent_turns[].npc_text", 120),
        Drop("evidence", last_first=True), Drop("retrieved", last_first=True),
        Clip("note", 400), Clip("npc.content", 400),
        Drop("recent_turns"), Clip("memories"), Clip("cards"),
        Clip("player_text", 400), Clip("note", 100), Clip("npc.content", 100),
        Clip("player_text", 50), Clip("note"), Clip("npc.content"),
    ),
    "analysis": (
        Clip("hints", 200), Clip("npc_text", 600), Clip("player_text", 600),
        Drop("entities", keep=8, last_first=True), Clip("hints"),
        Clip("npc_text", 200), Clip("player_text", 200), Drop("entities", keep=1, last_first=True),
        Clip("npc_text", 50), Clip("player_text", 50),
    ),
    "rewrite_note": (
        Clip("lore", 300), Clip("event", 600), Clip("note", 600), Clip("lore"),
        Clip("event", 200), Clip("note", 200), Clip("event", 50), Clip("note"),
    ),
    "consolidate_note": (Clip("lore"), Clip("note", 200), Clip("note", 50)),
    "create_entity": (
        Clip("creation_summary", 300), Drop("names", keep=1, last_first=True),
        Clip("creation_summary", 50),
    ),
    "simulate_world": (
        Drop("recent", last_first=True), Clip("targets[].note", 100),
        Clip("targets[].content", 100), Drop("places", last_first=True),
        Clip("targets[].note"), Clip("targets[].content", 30), Clip("world_title", 30),
    ),
    "summarize_session": (
        Clip("turns[].player_text", 150), Clip("turns[].npc_text", 150), Clip("previous", 300),
        Drop("turns", keep=3), Clip("turns[].player_text", 60), Clip("turns[].npc_text", 60),
        Clip("previous"), Drop("turns", keep=1), Clip("player_name", 30),
    ),
    "judge_reply": (
        Clip("lore", 300), Clip("npc_text", 400), Clip("player_text", 300), Clip("lore", 50),
        Clip("npc_text", 100), Clip("player_text", 100),
    ),
    "judge_consistency": (
        Clip("question", 300), Clip("first", 400), Clip("second", 400),
        Clip("question", 100), Clip("first", 100), Clip("second", 100),
    ),
}


@dataclass
class Fitted:
    """A rendering within its limit: ``messages``, their ``tokens`` (as counted), the
    ``context`` rendered (trimmed), and ``trimmed``, one line per step that changed it
    (``"Drop evidence: 6 -> 2"``, ``"Clip note: 1800 -> 400 chars"``)."""

    messages: Messages
    tokens: int
    context: dict
    trimmed: list[str] = field(default_factory=list)


def clip(text: str, chars: int) -> str:
    """``text`` cut to at most ``chars`` characters, ending in :data:`MARK` when cut (``""``
    for ``chars`` 0)."""
    if len(text) <= chars:
        return text
    if chars <= len(MARK):
        return text[:chars] if chars > 0 else ""
    return text[: chars - len(MARK)].rstrip() + MARK


def fit(template: str, context: dict, limit: int, count: Counter) -> Fitted:
    """Render ``template`` (``prompts.messages``) within ``limit`` tokens as ``count``
    counts them, trimming by ``PLANS[template]`` (a template without a plan is rendered
    untrimmed and must fit as it is).

    Args:
        template: template name without ``.j2``.
        context: the template's variables (not modified).
        limit: the most tokens the messages may count.
        count: tokens of a message list (``inference.tokens.TokenCounter.count_messages``).

    Raises:
        PromptTooLong: every step applied and still over ``limit``.
        jinja2.UndefinedError: a variable the template uses is missing.
    """
    msgs = prompts.messages(template, **context)
    tokens = count(msgs)
    if tokens <= limit:
        return Fitted(msgs, tokens, context)
    ctx = dict(context)  # steps replace values, never change them in place
    trimmed: list[str] = []

    def render() -> tuple[Messages, int]:
        m = prompts.messages(template, **ctx)
        return m, count(m)

    for step in PLANS.get(template, ()):
        note = _apply(step, ctx, render, limit)
        if note:
            trimmed.append(note)
        msgs, tokens = render()
        if tokens <= limit:
            return Fitted(msgs, tokens, ctx, trimmed)
    raise PromptTooLong(template, tokens, limit)


def _split(path: str) -> tuple[str, bool, str | int | None]:
    """``"a[].b"`` -> ``("a", True, "b")``; ``"a.b"`` -> ``("a", False, "b")``;
    ``"a[]"`` -> ``("a", True, None)``; a digit key is an ``int``."""
    head, _, key = path.partition(".")
    each = head.endswith("[]")
    name = head[:-2] if each else head
    sub: str | int | None = (int(key) if key.isdigit() else key) if key else None
    return name, each, sub


def _get(item, key):
    if key is None:
        return item
    if isinstance(item, dict):
        return item.get(key)
    return item[key]


def _set(item, key, value):
    if key is None:
        return value
    if isinstance(item, dict):
        return {**item, key: value}
    out = list(item)
    out[key] = value
    return tuple(out) if isinstance(item, tuple) else out


def _apply(step: Step, ctx: dict, render, limit: int) -> str:
    """Apply ``step`` to ``ctx`` as far as needed to fit ``limit`` (or fully); a note of
    what changed, '' if nothing did."""
    name, each, key = _split(step.path)
    if name not in ctx or ctx[name] is None:
        return ""
    if isinstance(step, Drop):
        items = list(ctx[name])
        before = len(items)
        while len(items) > step.keep:
            items = items[:-1] if step.last_first else items[1:]
            ctx[name] = items
            if render()[1] <= limit:
                break
        return f"Drop {name}: {before} -> {len(items)}" if len(items) < before else ""

    def texts() -> list[str]:
        values = [_get(i, key) for i in ctx[name]] if each else [_get(ctx[name], key)]
        return [v for v in values if isinstance(v, str)]

    original = ctx[name]

    def cap(chars: int) -> None:
        if each:
            ctx[name] = [_set(i, key, clip(v, chars)) if isinstance(v := _get(i, key), str) else i
                         for i in original]
        else:
            v = _get(original, key)
            if isinstance(v, str):
                ctx[name] = _set(original, key, clip(v, chars))

    longest = max((len(t) for t in texts()), default=0)
    if longest <= step.floor:
        return ""
    # the longest cap that fits, by bisection over [floor, longest)
    lo, hi = step.floor, longest - 1
    cap(lo)
    if render()[1] <= limit:
        while lo < hi:
            mid = (lo + hi + 1) // 2
            cap(mid)
            if render()[1] <= limit:
                lo = mid
            else:
                hi = mid - 1
        cap(lo)
    return f"Clip {step.path}: {longest} -> {lo} chars"
