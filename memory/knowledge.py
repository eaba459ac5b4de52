"""Knowledge updates in session notes: a newer fact supersedes an older one of the same
relation and subject, and the older one stays in the note marked as past.

Deterministic, so it holds whatever model rewrote the note. A small lexicon of relations
(``LEXICON``), each a list of English verb phrases:

- single-valued (one value at a time per subject; a new value supersedes any other):
  ``residence`` (lives in, moved to, stays at, is at, resides in, settled in),
  ``status`` (alive: is alive, survived; dead: died, is dead, was killed, was slain),
  ``occupation`` (works as, became a; ``is a X`` only when X is one word),
  ``allegiance`` (serves, is married to, married, is loyal to, works for);
- per object, with polarity (a subject holds many objects; a statement of the opposite
  polarity about the same object supersedes): ``possession`` (owns, has / gave away, lost,
  sold), ``membership`` (joined / left).

A statement is ``(relation, subject, object terms, polarity)``. Its subject is the last word
before the verb phrase in its sentence; a pronoun, a word of the entry's title or nothing
there means the entry itself (``"self"``). Its object is the content words after the phrase up
to the end of the clause. Two statements conflict when relation and subject match and: for a
single-valued relation, their objects share no word ("lives in Rome" / "moved to Paris"); for
a per-object relation, their objects share a word and their polarities differ ("owns the
lute" / "sold the lute"). This is slot filling over a fixed relation inventory, the approach of
the TAC-KBP slot-filling task, reduced to a lexicon; its limits: relations outside the
lexicon, and subjects named only by a description, are not tracked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memory.retention import STOPWORDS, stem, title_tokens

SINGLE = "single"
PER_OBJECT = "per_object"

LEXICON: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "residence": (SINGLE, [(p, "") for p in (
        r"lives in", r"lived in", r"live in", r"moved to", r"moves to", r"has moved to",
        r"stays at", r"stayed at", r"is staying at", r"is at", r"is now at", r"is now in",
        r"resides in", r"settled in")]),
    "status": (SINGLE, [(p, "alive") for p in (r"is alive", r"is still alive", r"survived")]
               + [(p, "dead") for p in (r"died", r"is dead", r"was killed", r"was slain",
                                        r"was murdered", r"has died")]),
    "occupation": (SINGLE, [(p, "") for p in (r"works as an?", r"works as", r"worked as",
                                              r"became an?", r"is now an?", r"is an?")]),
    "allegiance": (SINGLE, [(p, "") for p in (r"serves", r"is married to", r"married",
                                              r"is loyal to", r"works for")]),
    "possession": (PER_OBJECT, [(p, "+") for p in (r"owns", r"has(?! been\b| to\b| no\b| \w+ed\b| become\b| gone\b| left\b| lost\b| sold\b| got\b)", r"bought")]
                   + [(p, "-") for p in (r"gave away", r"lost", r"sold")]),
    "membership": (PER_OBJECT, [(r"joined", "+"), (r"left(?! for\b)", "-")]),
}

_PRONOUNS = frozenset("he she they it him her i we".split())
_CLAUSE_END = re.compile(r"[.,;!?\n]| and | but | while | because ")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STAMP_PREFIX = re.compile(r"^\s*\[(?:day \d+, \d{2}:\d{2}|undated)\]\s*", re.I)
_WORD = re.compile(r"[A-Za-z]+")
PAST = "Formerly"

_PATTERNS = [(rel, kind, value, re.compile(rf"\b{phrase}\b", re.I))
             for rel, (kind, phrases) in LEXICON.items() for phrase, value in phrases]


@dataclass(frozen=True)
class Statement:
    """One fact of the lexicon found in a sentence: ``relation``, ``subject`` (lower-case word
    or ``"self"``), ``obj`` (content-word stems; for ``status`` the value), ``polarity``
    (``+``/``-`` for per-object relations, '' otherwise)."""

    relation: str
    subject: str
    obj: frozenset[str]
    polarity: str = ""

    def conflicts(self, newer: Statement) -> bool:
        """True when ``newer`` supersedes this statement (rules in the module docstring)."""
        if (self.relation, self.subject) != (newer.relation, newer.subject):
            return False
        if LEXICON[self.relation][0] == SINGLE:
            return not (self.obj & newer.obj)
        return bool(self.obj & newer.obj) and self.polarity != newer.polarity


def _subject(before: str, own: frozenset[str]) -> str:
    words = [w for w in _WORD.findall(before)]
    if not words:
        return "self"
    last = words[-1].lower()
    if last in _PRONOUNS or last in own or stem(last) in own:
        return "self"
    return stem(last)


def statements(sentence: str, title: str) -> list[Statement]:
    """The lexicon's statements in one sentence (at most one per relation: the first phrase
    that matches), for an entry titled ``title``."""
    own = title_tokens(title)
    text = _STAMP_PREFIX.sub("", sentence)
    out: list[Statement] = []
    seen: set[str] = set()
    for rel, kind, value, pattern in _PATTERNS:
        if rel in seen:
            continue
        m = pattern.search(text)
        if m is None:
            continue
        clause = _CLAUSE_END.split(text[m.end():], maxsplit=1)[0]
        words = [w.lower() for w in _WORD.findall(clause)]
        obj = frozenset(stem(w) for w in words if w not in STOPWORDS and len(w) > 1)
        if rel == "status":
            obj = frozenset([value])
        elif not obj or (rel == "occupation" and m.group().lower().startswith("is ") and len(obj) > 1):
            continue
        seen.add(rel)
        start = max(text.rfind(x, 0, m.start()) for x in (",", ";", " and ", " but "))
        before = text[start + 1 if start >= 0 else 0: m.start()]
        out.append(Statement(rel, _subject(before, own), obj,
                             value if kind == PER_OBJECT else ""))
    return out


def sentences(text: str) -> list[str]:
    """The sentences of one note line (split after ``.``, ``!``, ``?``)."""
    return [s for s in _SENTENCE.split(text.strip()) if s]


def is_past(sentence: str) -> bool:
    """True when the sentence is already marked as a superseded fact."""
    return PAST.lower() in _STAMP_PREFIX.sub("", sentence)[:len(PAST) + 2].lower()


def mark_past(sentence: str, until: str | None) -> str:
    """``"Formerly (until Day 3, 09:00): <sentence>"``, keeping a leading time stamp in front;
    ``"Formerly: <sentence>"`` when the time of the newer fact is unknown."""
    m = _STAMP_PREFIX.match(sentence)
    stamp, rest = (m.group(), sentence[m.end():]) if m else ("", sentence)
    label = f"{PAST} (until {until})" if until else PAST
    return f"{stamp}{label}: {rest}"


def supersede(lines: list[str], event: str, title: str, until: str | None) -> tuple[list[str], list[str]]:
    """Mark as past every sentence of ``lines`` that ``event`` supersedes.

    Args:
        lines: the note's lines, oldest first.
        event: the newer event text.
        title: the entry's title (its words are the note's implicit subject).
        until: the in-game time of the event (``"Day 3, 09:00"``) or None.

    Returns:
        ``(new_lines, superseded)``: the lines with superseded sentences marked past
        (``mark_past``), and those sentences as they were.
    """
    newer = [st for s in sentences(event) for st in statements(s, title)]
    if not newer:
        return list(lines), []
    out, old = [], []
    for line in lines:
        parts = []
        for s in sentences(line):
            if not is_past(s) and any(st.conflicts(n) for st in statements(s, title) for n in newer):
                old.append(s)
                s = mark_past(s, until)
            parts.append(s)
        out.append(" ".join(parts))
    return out, old


def states(text: str, event: str, title: str) -> list[int]:
    """Indexes of the sentences of ``text`` (one line) that state a fact of ``event`` (same
    relation, subject and a shared object word, same polarity) and are not marked past."""
    newer = [st for s in sentences(event) for st in statements(s, title)]
    hits = []
    for i, s in enumerate(sentences(text)):
        if is_past(s):
            continue
        for st in statements(s, title):
            if any(st.relation == n.relation and st.subject == n.subject and st.obj & n.obj
                   and st.polarity == n.polarity for n in newer):
                hits.append(i)
                break
    return hits
