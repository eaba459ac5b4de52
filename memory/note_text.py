"""The text of a session note without a model: dated event lines, knowledge updates, the cap.

A note is lines, oldest first. What the rewriter could not be trusted to do is done here:

- ``append_events``: the previous note, its superseded facts marked past
  (``memory.knowledge.supersede``), then one dated line per event
  (``"[Day 2, 14:05] <event>"``): the fallback that loses nothing.
- ``date_new_facts``: the same knowledge updates applied to an accepted rewrite, and the
  newer fact stated with its in-game time (its sentence stamped, or the dated event line
  appended when the rewrite phrased it otherwise).
- ``drop_oldest``: the last resort under ``max_chars``: whole lines dropped oldest first, then
  leading sentences, never the lines of the events being applied. What is dropped stays in
  the session's evidence (the raw turns), so it remains retrievable.
"""

from __future__ import annotations

from memory import knowledge
from memory.nearline import format_game_time

Event = tuple[str, int | None]
"""``(event text, in-game minutes or None)``."""


def game_time(minutes: int | None) -> str | None:
    """``"Day 2, 14:05"`` for 2285 in-game minutes; None when unknown."""
    if minutes is None:
        return None
    t = format_game_time(minutes)
    return t[:1].upper() + t[1:]


def event_line(text: str, minutes: int | None) -> str:
    """One dated note line: ``"[Day 2, 14:05] text"`` (the text alone without a time)."""
    when = game_time(minutes)
    text = " ".join(text.split())
    return f"[{when}] {text}" if when else text


def lines_of(note: str) -> list[str]:
    """The non-empty lines of a note, stripped."""
    return [x.strip() for x in note.splitlines() if x.strip()]


def append_events(previous: str, events: list[Event], title: str) -> tuple[str, list[str]]:
    """The previous note with each event's superseded facts marked past and the event
    appended as a dated line, in order.

    Returns:
        ``(note, superseded)``: the new text and the previous sentences marked past.
    """
    lines = lines_of(previous)
    old: list[str] = []
    for text, minutes in events:
        lines, gone = knowledge.supersede(lines, text, title, game_time(minutes))
        old += gone
        lines.append(event_line(text, minutes))
    return "\n".join(lines), old


def superseded_by(previous: str, events: list[Event], title: str) -> list[str]:
    """The sentences of ``previous`` that ``events`` supersede (what a rewrite must keep,
    marked past)."""
    return append_events(previous, events, title)[1]


def date_new_facts(candidate: str, events: list[Event], title: str) -> str:
    """Apply the events' knowledge updates to an accepted rewrite: older conflicting
    sentences marked past, and for each event that superseded something, the sentence stating
    the newer fact prefixed with its time stamp (or, when no sentence states it in the
    lexicon's terms, the dated event line appended)."""
    lines = lines_of(candidate)
    for text, minutes in events:
        lines, gone = knowledge.supersede(lines, text, title, game_time(minutes))
        if not gone or minutes is None:
            continue
        stamp = f"[{game_time(minutes)}] "
        for n, line in enumerate(lines):
            hits = knowledge.states(line, text, title)
            if hits:
                parts = knowledge.sentences(line)
                if not parts[hits[0]].startswith("["):
                    parts[hits[0]] = stamp + parts[hits[0]]
                lines[n] = " ".join(parts)
                break
        else:
            lines.append(event_line(text, minutes))
    return "\n".join(lines)


def drop_oldest(note: str, keep_last: int, max_chars: int) -> tuple[str, int]:
    """Fit ``note`` under ``max_chars`` by dropping its oldest lines, then the leading
    sentences of its oldest remaining line; the last ``keep_last`` lines (the events being
    applied) are kept, cut at the end if they alone exceed the cap.

    Returns:
        ``(note, dropped)``: the text and how many lines or sentences were dropped.
    """
    lines = lines_of(note)
    dropped = 0
    while len("\n".join(lines)) > max_chars and len(lines) > keep_last:
        parts = knowledge.sentences(lines[0])
        if len(parts) > 1 and len("\n".join(lines)) - len(lines[0]) <= max_chars:
            lines[0] = " ".join(parts[1:])  # a sentence may be enough
        else:
            lines.pop(0)
        dropped += 1
    text = "\n".join(lines)
    return (text[:max_chars].rstrip(), dropped) if len(text) > max_chars else (text, dropped)
