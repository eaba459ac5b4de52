"""Lore-consistency guard, first pass: entity and negation rules, no model call.

An NPC reply is checked against the canon of its turn, the NPC's base lore (its entry's
title and content) and the documents the turn retrieved (``[(title, text)]``), for
contradictions of four kinds of stated fact:

- ``dead``: the canon says someone is dead (``"Old Tom drowned"``, ``"the late Tom"``) and
  the reply speaks of them as alive (``"Tom is well, I saw him today"``);
- ``alive``: a character of the canon (the NPC, or a retrieved character entry) with no
  death stated, whom the reply says is dead (``"Marta died last winter"``);
- ``owns``: an item the NPC's lore gives it (``"a spyglass at her belt"``, ``"He wears a
  heavy leather apron"``, ``"Dorin's debt ledger"``) that the reply denies having
  (``"I have no spyglass"``, ``"the ledger isn't mine"``);
- ``place`` and ``name``: the reply places the NPC somewhere its lore does not name
  (``"welcome to the Salty Dog"`` from the keeper of the Gull and Lantern), or gives it
  another name (``"my name is Greta"``).

A statement under negation (``not``, ``n't``, ``never``, ``no longer`` within a few words
before it) is read as negated: ``"Tom is not alive"`` agrees with ``"Tom drowned"``. The
session note (``note``) overrides base lore: a fact whose subject the note names is not
checked (the session may have changed it).

The rules favour precision: a reply that is merely vague, or contradicts a fact in words
the patterns do not know, passes. The analysis model is the optional second pass
(``inference.calls.check_canon``, setting ``LORE_GUARD=rules+model``); the turn endpoint
regenerates once with the contradicted fact stated (:func:`fact_prompt`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Fact", "Contradiction", "extract_facts", "check_reply", "fact_prompt"]


@dataclass(frozen=True)
class Fact:
    """A fact of the canon: ``kind`` (``dead``, ``alive``, ``owns``, ``place``, ``name``),
    ``subject`` (who or what, as the canon writes it), ``text`` (the fact as one sentence,
    for a prompt or a log), ``source`` (the title of the document it came from), and
    ``terms`` (lower-case words or phrases that name the subject in a reply)."""

    kind: str
    subject: str
    text: str
    source: str
    terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contradiction:
    """A reply sentence (``sentence``) that contradicts ``fact``."""

    fact: Fact
    sentence: str

    def describe(self) -> str:
        """``"<fact> (reply: <sentence>)"``, for the turn response and the log."""
        return f"{self.fact.text} (reply: {self.sentence.strip()[:200]})"


_NAME = r"(?:[A-Z][\w'-]+(?:\s+(?:of\s+|and\s+|the\s+)?[A-Z][\w'-]+)*)"
_SUBJECT = rf"(?P<s>(?:(?i:the)\s+(?:old\s+|late\s+)?[a-z]+)|{_NAME})"
_DEATH_AFTER = re.compile(
    _SUBJECT + r"(?:'s)?\s+(?:is|was|lies|had been|has been|were)?\s*(?:long\s+)?"
    r"(?:\w+ly\s+)?(?:dead|died|drowned|killed|slain|murdered|buried|perished|passed away"
    r"|gone to the sea|lost at sea)\b")
_DEATH_BEFORE = re.compile(
    r"\b(?:the late|poor dead|killed|slew|murdered|drowned|buried|mourn(?:ed|s)?|grave of)\s+"
    + _SUBJECT)
_DEATH_WORDS = re.compile(r"\b(?:dead|died|death|drowned|killed|slain|murdered|buried|"
                          r"grave|"
                          r"perished|passed away|late|mourn\w*|miss(?:ed|es)?|ghost|rest in|"
                          r"memory|funeral|lost at sea)\b", re.I)
_ALIVE_WORDS = re.compile(
    r"\b(?:alive|living|lives|well|healthy|(?:saw|seen|see|met|meet|visit(?:ed)?)\s+(?:him|her|"
    r"them)|spoke (?:to|with)|talked (?:to|with)|(?:is|'s) (?:coming|back|here|waiting|upstairs|"
    r"asking|doing)|will (?:be back|come|tell)|is fine|is doing)\b", re.I)
_NEGATION = re.compile(r"\b(?:not|never|no longer|no|nobody|none|isn't|wasn't|aren't|ain't|"
                       r"didn't|doesn't|don't|won't|hasn't|haven't|cannot|can't)\b|n't\b", re.I)
_OWN_VERBS = re.compile(
    r"\b(?:wears|wear|carries|carry|carried|holds|hold|owns|own|keeps|keep|wields|wield|"
    r"has|have|bears)\s+(?:a|an|the|his|her|their|my)\s+"
    r"(?P<item>(?:[a-z][\w-]*,?\s+){0,3}[a-z][\w-]*)(?=\s+(?:at|in|on|with|over|and|that|which|"
    r"of|to|from|for)\b|[,.;!?]|$)")
_AT_BELT = re.compile(r"\b(?:a|an|the)\s+(?P<item>(?:[a-z][\w-]*\s+){0,2}[a-z][\w-]*)\s+"
                      r"(?:at|on|in)\s+(?:his|her|their|my)\s+(?:belt|side|hip|back|hand|neck)")
_NOT_ITEMS = {"been", "a", "an", "the", "eyes", "hair", "face", "heart", "smile", "laugh",
              "look", "way", "time", "life", "years", "shoulders", "hands", "arms", "voice",
              "sense", "passion", "spark", "air", "nose", "nature", "name", "debt", "soul",
              "frame", "build", "physique", "figure", "lot", "goal", "duty", "faith",
              "strength", "courage", "pride", "mission", "home", "people", "friends",
              "family", "questions", "visitors", "everyone", "anyone", "it", "them", "him",
              "her", "this", "that", "no", "never", "seen", "heard", "lived", "dedicated",
              "devoted", "spent", "traveled", "journeyed", "forged", "a lot"}
_DENIAL = re.compile(
    r"\b(?:I|we)\s+(?:do not|don't|dont|never|did not|didn't|no longer)\s+(?:have|own|carry|"
    r"keep|had|owned|carried|hold|wear|possess)\b"
    r"|\bI(?:'ve|\s+have)?\s+(?:got\s+)?(?:no|never had|never owned|lost|sold|given away|"
    r"gave away|pawned)\b"
    r"|\b(?:not|isn't|ain't|is not|never was|wasn't)\s+mine\b|\bno such\b"
    r"|\bI\s+haven't\s+(?:got\s+)?(?:a|an|any)\b", re.I)
_PLACE_CLAIM = re.compile(
    r"\b(?:I|we)\s+(?:live|work|stay|run|keep|own|manage|tend|serve)\w*\s+(?:here\s+)?"
    r"(?:in|at|on|from)?\s*(?:the\s+)?(?P<p>" + _NAME + ")"
    r"|\b(?i:welcome to)\s+(?:the\s+)?(?P<w>" + _NAME + ")"
    r"|\bI(?:'m|\s+am)\s+(?:the\s+\w+\s+)?(?:from|of)\s+(?:the\s+)?(?P<f>" + _NAME + ")"
    r"|\bmy\s+(?:inn|shop|tavern|home|house|post|forge|stall|tower|church|library|hall)\s*,?"
    r"\s+(?:is\s+|the\s+)?(?:called\s+|named\s+)?(?:the\s+)?(?P<m>" + _NAME + ")")
_NAME_CLAIM = re.compile(r"\b(?i:my name is|I am|I'm|call me|they call me|name's)\s+"
                         r"(?P<n>[A-Z][\w'-]+)")
_PRONOUNS = {"I", "I'm", "My", "Her", "His", "Their", "Our", "She", "He", "They", "It", "A", "An",
             "The", "This", "That", "Mrs", "Mr", "Mrs.", "Mr."}
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_GENERIC = {"i", "the", "a", "sir", "madam", "friend", "stranger", "traveller", "traveler",
            "here", "there", "yes", "no", "well", "oh", "ah", "aye", "god", "gods", "lord",
            "lady", "captain", "sergeant", "mister", "mistress", "master"}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text or "") if s.strip()]


def _negated(sentence: str, start: int, window: int = 4) -> bool:
    """A negation word within ``window`` words before offset ``start`` of ``sentence``."""
    before = sentence[:start].split()[-window:]
    return bool(_NEGATION.search(" ".join(before)))


def _name_terms(name: str) -> tuple[str, ...]:
    """Lower-case words that name ``name`` in a reply: the whole name, and each capitalized
    word of it that is not a title or article (``"Sergeant Ilsa Brenn"``: ``ilsa``, ``brenn``).
    A ``"the dragon"`` subject is itself."""
    name = re.sub(r"^the\s+(?:old\s+|late\s+)?", "the ", name.strip(), flags=re.I)
    terms = [name.lower()]
    if not name.lower().startswith("the "):
        terms += [w.lower().strip("',") for w in name.split()
                  if w[:1].isupper() and w.lower().strip("',") not in _GENERIC
                  and len(w) > 2]
    return tuple(dict.fromkeys(terms))


def _mentions(sentence: str, terms: tuple[str, ...]) -> re.Match | None:
    low = sentence.lower()
    for t in terms:
        m = re.search(rf"\b{re.escape(t)}\b", low)
        if m:
            return m
    return None


def _is_character(text: str) -> bool:
    return bool(re.match(r"\s*(?:Description|Persona):", text or ""))


def _clean_title(title: str) -> str:
    """``"Banjo the blacksmith"``, ``"Abigail, the priestess"`` -> the person's name part."""
    return re.split(r",|\s+the\s+", title.strip(), maxsplit=1)[0].strip() or title


def extract_facts(npc: dict, retrieved: list[tuple[str, str]], note: str = "") -> list[Fact]:
    """The facts the rules check, from the NPC's base lore and the retrieved documents.

    Args:
        npc: the NPC's cached entry ``{title, content, ...}``.
        retrieved: ``[(title, text)]`` the turn retrieved (lore entries, documents).
        note: the NPC's session note ('' when none): facts whose subject it names are left
            out, as the note overrides base lore.
    Returns:
        Facts in canon order, deduplicated by ``(kind, subject)``.
    """
    title = npc.get("title") or ""
    content = npc.get("content") or ""
    docs = [(title, content)] + [(t, d) for t, d in retrieved if d]
    facts: dict[tuple[str, str], Fact] = {}
    dead: set[str] = set()
    for src, text in docs:
        for sent in _sentences(text):
            for rx in (_DEATH_AFTER, _DEATH_BEFORE):
                for m in rx.finditer(sent):
                    s = m.group("s")
                    if s.lower() in _GENERIC or s in ("I", "He", "She", "They", "It"):
                        continue
                    if _negated(sent, m.start()):
                        continue
                    terms = _name_terms(s)
                    dead.update(terms)
                    facts.setdefault(("dead", terms[0]), Fact(
                        "dead", s, f"{s} is dead.", src, terms))
    # characters of the canon with no death stated are alive
    for src, text in docs:
        if src != title and not _is_character(text):
            continue
        name = _clean_title(src)
        terms = _name_terms(name)
        if not terms or any(t in dead for t in terms):
            continue
        facts.setdefault(("alive", terms[0]), Fact("alive", name, f"{name} is alive.", src,
                                                   terms))
    # what the NPC owns: its own lore, and "<Name>'s <item>" anywhere in the canon
    first = _clean_title(title).split()[0] if title else ""
    owned: list[str] = []
    for sent in _sentences(content):
        for rx in (_OWN_VERBS, _AT_BELT):
            for m in rx.finditer(sent):
                owned.append(m.group("item"))
    if first:
        for src, text in docs:
            for m in re.finditer(rf"\b{re.escape(first)}'s\s+((?:[a-z][\w-]*\s+){{0,2}}"
                                 rf"[a-z][\w-]*)", f"{src}. {text}"):
                owned.append(m.group(1))
    for item in owned:
        item = item.replace(",", "")
        words = item.lower().split()
        head = words[-1]
        if head in _NOT_ITEMS or len(head) < 3:
            continue
        facts.setdefault(("owns", head), Fact(
            "owns", item, f"{title} has {'an' if item[0] in 'aeiou' else 'a'} {item}.",
            title, (head,)))
    # where the NPC is: every name its lore or a retrieved place holds counts as known
    places = [m.group(0) for sent in _sentences(content) for m in re.finditer(_NAME, sent)
              if (m.start() > 0 or " " in m.group(0)) and not sent[:m.start()].endswith(": ")
              and m.group(0).split()[0] not in _PRONOUNS]
    places += [t for t, d in retrieved if not _is_character(d)]
    places = [p for p in dict.fromkeys(places) if p and not _name_terms(p)[0] in _GENERIC]
    if places:
        facts[("place", "")] = Fact("place", title, f"{title} is known at "
                                    + ", ".join(places[:6]) + ".", title,
                                    tuple(p.lower() for p in places))
    if title:
        facts[("name", "")] = Fact("name", title, f"Your name is {_clean_title(title)}.", title,
                                   _name_terms(_clean_title(title)) + _name_terms(title))
    low_note = (note or "").lower()
    return [f for f in facts.values()
            if not (low_note and f.kind in ("dead", "alive", "owns")
                    and any(re.search(rf"\b{re.escape(t)}\b", low_note) for t in f.terms))]


def _place_known(place: str, known: tuple[str, ...]) -> bool:
    p = re.sub(r"^the\s+", "", place.lower())
    words = {w for w in re.findall(r"[a-z']+", p) if w not in ("the", "and", "of")}
    for k in known:
        k = re.sub(r"^the\s+", "", k)
        kw = {w for w in re.findall(r"[a-z']+", k) if w not in ("the", "and", "of")}
        if words and kw and (words <= kw or kw <= words):
            return True
    return False


def check_reply(reply: str, facts: list[Fact], npc_title: str = "") -> list[Contradiction]:
    """The reply's sentences that contradict ``facts`` (:func:`extract_facts`), at most one
    per fact, in fact order; [] when none does."""
    found: dict[Fact, Contradiction] = {}
    sentences = _sentences(reply)
    self_terms = _name_terms(_clean_title(npc_title)) if npc_title else ()
    for fact in facts:
        for sent in sentences:
            hit = None
            if fact.kind == "dead":
                m = _mentions(sent, fact.terms)
                a = _ALIVE_WORDS.search(sent)
                if not a and m:  # "I saw the dragon yesterday"
                    a = re.search(r"\b(?:saw|seen|met|meet|visited|spoke to|talked to|fed)\s+"
                                  r"(?:the\s+|with\s+)?$", sent[:m.start()].lower())
                    a = a and re.search(re.escape(a.group(0).strip()), sent, re.I)
                if m and a and not _DEATH_WORDS.search(sent) and not _negated(sent, a.start()):
                    hit = sent
            elif fact.kind == "alive":
                if set(fact.terms) & set(self_terms):
                    continue  # the NPC speaking of its own death is a figure of speech
                for rx in (_DEATH_AFTER, _DEATH_BEFORE):
                    for m in rx.finditer(sent):
                        if (_mentions(m.group("s"), fact.terms)
                                and not _negated(sent, m.end() - 1, window=6)
                                and not _negated(sent, m.start())):
                            hit = sent
            elif fact.kind == "owns":
                if _mentions(sent, fact.terms) and _DENIAL.search(sent):
                    hit = sent
            elif fact.kind == "place":
                for m in _PLACE_CLAIM.finditer(sent):
                    p = next(g for g in m.groups() if g)
                    if (p.split()[0].lower() not in _GENERIC and not _negated(sent, m.start())
                            and not _mentions(p, self_terms)
                            and not _place_known(p, fact.terms)):
                        hit = sent
            elif fact.kind == "name":
                for m in _NAME_CLAIM.finditer(sent):
                    n = m.group("n").lower().removesuffix("'s")
                    if (n not in _GENERIC and n not in fact.terms
                            and not _negated(sent, m.start())
                            and not any(n in t for t in fact.terms)):
                        hit = sent
            if hit:
                found.setdefault(fact, Contradiction(fact, hit))
                break
    return list(found.values())


def fact_prompt(contradictions: list[Contradiction]) -> str:
    """The contradicted facts as prompt text for the regeneration: one line per fact, and for
    a wrong place or name the fact to hold to."""
    lines = []
    for c in contradictions:
        lines.append(f"- {c.fact.text} Do not say otherwise.")
    return "\n".join(dict.fromkeys(lines))
