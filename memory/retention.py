"""Measured checks a session-note rewrite must pass before it may replace the previous note.

A rewrite is structure a model adds on top of evidence; it must not lose what the previous
note knew, must state the new event, must not echo the prompt and must not invent names. All
checks here are plain functions of text (no model), so they hold however weak the rewriter is.

Terms of a text (``terms``):

- *names*: capitalised or all-caps word tokens, lower-cased, except stopwords and common
  sentence starters (``The``, ``She``, ``Later``...) and the note's own markers (``Day``,
  ``Formerly``); numbers (``3``); and in-game times (``Day 2, 14:05``, one term each, in any
  bracketing): a rewrite that drops the date of a fact drops evidence.
- *content words*: the other tokens of three letters or more, lower-cased, stopwords removed,
  reduced by a light suffix stemmer (``lives``/``lived``/``living`` -> ``liv``).

Coverage of required terms by a candidate text (``coverage``), with ``NAME_WEIGHT`` = 2::

    coverage = (2 * |names found| + |content words found|) / (2 * |names| + |content words|)

(1.0 when nothing is required). A name is found when the candidate has the same token in any
case; a content word when the candidate has the same stem. Tokens of the entry's own title
count as found: a rewrite may say "she" for the note's subject. Names weigh double because a
dropped name is a dropped fact far more often than a dropped common word is (paraphrase
changes words, rarely names). The idea of measuring a summary by the fraction of the source's
units it keeps is ROUGE recall (Lin, 2004), weighted towards named entities as in entity-level
factual-consistency checks of summaries (Nan et al., 2021).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_WEIGHT = 2.0

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it
its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
upon onto still yet ever never s t don't didn't won't can't
""".split())

STARTERS = frozenset("""
yesterday today tonight tomorrow later soon afterwards afterward meanwhile finally suddenly
however therefore thus eventually recently currently earlier first next last since although
though despite unfortunately luckily fortunately perhaps maybe instead overall together
everyone someone nobody everybody somebody nothing something everything anyone anything
one many several another every each some most both either neither none yes please thank
thanks oh ah well hello greetings sir madam lady lord mister mistress master
day formerly undated until
""".split())
"""Capitalised words that start sentences (or are the note's own markers) without being names."""

_TIME = re.compile(r"\bday (\d+),? (\d{1,2}):(\d{2})\b", re.I)
_TOKEN = re.compile(r"\d+(?::\d+)?|[A-Za-z]+")

_ECHO = re.compile(
    r"\[\s*(?:entity|original lore|current session note|session note|new event|lore|event)\b[^\]]*\]"
    r"|\b(?:the |a )?new events?\b|\b(?:new |current )?session notes?\b|\boriginal lore\b"
    r"|\brespond only\b|\brewrite the\b|\bnew session\b|\((?:location|character|item)\)"
    r"|^\s*task\s*:", re.I | re.M)
"""Prompt labels and instructions that a note never contains unless the model echoed them."""


def stem(word: str) -> str:
    """A light suffix stemmer for English content words (lower-case in, lower-case out):
    ``-ies`` -> ``-y``, then ``-ing``, ``-ed``, ``-s`` stripped, a doubled final consonant and
    a final ``e`` dropped, so ``moves``/``moved``/``moving``/``move`` all give ``mov``."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 3 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
        w = w[:-1]
    if len(w) > 2 and w.endswith("e"):
        w = w[:-1]
    return w


@dataclass(frozen=True)
class Terms:
    """The names (lower-cased tokens) and content-word stems of a text."""

    names: frozenset[str]
    words: frozenset[str]


def times(text: str) -> set[str]:
    """The in-game times named in ``text``, normalised: ``{"day 2, 14:05"}``."""
    return {f"day {int(d)}, {int(h):02d}:{m}" for d, h, m in _TIME.findall(text)}


def _tokens(text: str) -> list[str]:
    """Word and number tokens of ``text``, in-game times removed."""
    return _TOKEN.findall(_TIME.sub(" ", text))


def _is_name(token: str) -> bool:
    if token[0].isdigit():
        return True
    low = token.lower()
    return token[0].isupper() and len(token) > 1 and low not in STOPWORDS and low not in STARTERS


def terms(text: str, with_times: bool = True) -> Terms:
    """Names and content words of ``text`` (see the module docstring); ``with_times=False``
    leaves the in-game times out of the names."""
    names, words = (times(text) if with_times else set()), set()
    for tok in _tokens(text):
        low = tok.lower()
        if _is_name(tok):
            names.add(low)
        elif len(low) >= 3 and low not in STOPWORDS and not tok[0].isdigit():
            words.add(stem(low))
    return Terms(frozenset(names), frozenset(words))


def _present(text: str) -> tuple[set[str], set[str]]:
    toks = [t.lower() for t in _tokens(text)]
    return set(toks) | times(text), {stem(t) for t in toks}


def coverage(required: Terms, candidate: str, implied: frozenset[str] = frozenset()) -> float:
    """Weighted fraction of ``required`` terms present in ``candidate`` (0.0-1.0; formula in the
    module docstring). ``implied``: lower-cased tokens counted as present (the entry's title)."""
    lows, stems = _present(candidate)
    names = len(required.names)
    words = len(required.words)
    if names + words == 0:
        return 1.0
    got_names = sum(1 for n in required.names if n in lows or n in implied or stem(n) in stems)
    got_words = sum(1 for w in required.words if w in stems or w in implied)
    return (NAME_WEIGHT * got_names + got_words) / (NAME_WEIGHT * names + words)


def title_tokens(title: str) -> frozenset[str]:
    """Lower-cased tokens of an entry title (``"Mira the Smith"`` -> ``{mira, the, smith}``),
    and their stems: what ``coverage`` counts as implied."""
    toks = {t.lower() for t in _TOKEN.findall(title)}
    return frozenset(toks | {stem(t) for t in toks})


def prompt_echo(text: str) -> str | None:
    """The first prompt label or instruction echoed in ``text`` (``"[Entity]"``,
    ``"The new event"``, ``"Session Note"``...), or None."""
    m = _ECHO.search(text)
    return m.group().strip() if m else None


def invented_names(candidate: str, *sources: str) -> list[str]:
    """Proper names and in-game times of ``candidate`` (as written, times first, in order,
    without repeats) that occur in none of ``sources`` in any case: what the rewriter made
    up. Plain numbers are not names here."""
    known = set()
    for src in sources:
        known |= _present(src)[0]
    out: list[str] = [m.group() for m in _TIME.finditer(candidate)
                      if times(m.group()).pop() not in known]
    for tok in _tokens(candidate):
        if tok[0].isdigit() or not _is_name(tok):
            continue
        if tok.lower() not in known and tok not in out:
            out.append(tok)
    return out


@dataclass(frozen=True)
class Verdict:
    """Whether a rewrite may replace the note: ``ok``; ``reason`` ('' when ok, else why not,
    e.g. ``"retention 0.42 < 0.75"``); ``retention`` and ``event`` the measured coverages
    (``retention`` is 1.0 for a first note)."""

    ok: bool
    reason: str
    retention: float
    event: float


def check_rewrite(previous: str, candidate: str, events: list[str], *, title: str, lore: str,
                  retention_min: float, event_min: float,
                  must_keep: list[str] | tuple = (), event_times: list[str] | tuple = (),
                  keep_times: bool = True) -> Verdict:
    """Judge a rewrite of ``previous`` that should fold in ``events``.

    Accepted only if all hold, checked in this order (the first failure is the reason):
    not empty; no prompt echo (``prompt_echo``); no invented name (``invented_names`` against
    the previous note, ``lore``, ``title`` and the events); ``coverage`` of the previous
    note's terms >= ``retention_min`` (skipped for a first note); coverage of each sentence in
    ``must_keep`` (superseded facts that must stay, marked past) >= ``retention_min``; and
    coverage of each event's terms >= ``event_min`` (``event`` reports the lowest).

    Args:
        previous: the current note ('' for a first note).
        candidate: the cleaned rewrite.
        events: the raw event texts being folded in (without time stamps).
        title, lore: the entry's title and base lore.
        retention_min, event_min: thresholds in [0, 1].
        must_keep: sentences of ``previous`` that must survive (superseded facts).
        event_times: the events' in-game times (``"Day 2, 14:05"``), which the rewrite may name.
        keep_times: whether the previous note's in-game times count for retention (False for
            a consolidation, which may merge the times of repeated events; it still may not
            invent one).
    """
    implied = title_tokens(title)
    ev = min((coverage(terms(e), candidate, implied) for e in events), default=1.0)
    if not candidate.strip():
        return Verdict(False, "empty rewrite", 0.0, 0.0)
    echo = prompt_echo(candidate)
    if echo:
        return Verdict(False, f"prompt echo {echo!r}", 0.0, ev)
    made_up = invented_names(candidate, previous, lore, title, *events, *event_times)
    if made_up:
        return Verdict(False, f"invented name {made_up[0]!r}", 0.0, ev)
    kept = coverage(terms(previous, keep_times), candidate, implied) if previous.strip() else 1.0
    if kept < retention_min:
        return Verdict(False, f"retention {kept:.2f} < {retention_min:.2f}", kept, ev)
    for fact in must_keep:
        if coverage(terms(fact), candidate, implied) < retention_min:
            return Verdict(False, f"superseded fact dropped: {fact[:60]!r}", kept, ev)
    if ev < event_min:
        return Verdict(False, f"event {ev:.2f} < {event_min:.2f}", kept, ev)
    return Verdict(True, "", kept, ev)
