"""Grounding rules for dynamically created entities: plain string functions, no model.

A created entity must carry a *name* that *occurs in its source text* (the turn that
introduced it). Small models turn dialogue lines, speaker labels and slugs into titles
("GINNA: Good to see you!", "Ginna-gnompanesSouls19B8A43D20", "john-harker", "The Narrator
left Munich in a hurry and went home"); these functions tell such titles from names.

No named-entity recogniser is used (none is installed, and a small NER model mislabels
fantasy names anyway): names are recognised by shape, which is what the junk titles violate.

- :func:`normalise_title` strips what models wrap around a name: a speaker prefix, a
  parenthesised or bracketed suffix (also unclosed: ``"Gina (d2"``), quotes, trailing
  punctuation.
- :func:`shape_problem` says why a title is not name-shaped (``None`` when it is).
- :func:`occurs_in` is the grounding test: the title's words occur in the text, in order,
  as whole words, case and punctuation ignored (so the possessive ``"Marta's"`` grounds
  ``"Marta"``).
- :func:`aliases` gives the short forms a text may use for a character's name (first name,
  surname, name without its honorific).
- :func:`candidate_names` lists the name-shaped capitalised spans of a text that are not
  sentence-initial common words: if none of them is new, there is nothing to create.

The shape rules follow the usual proper-noun heuristics for English text (capitalised
words outside sentence starts, allowing lower-case name particles such as "of", "de",
"van"), as in the rule-based name taggers that preceded statistical NER.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import pairwise

PARTICLES = frozenset(
    "of the de van von der den da di du la le del della des dos das y al el bin ibn ben "
    "on upon in and at o' d'".split())
"""Lower-case words allowed inside a name ("Isle of Skye", "Leonardo da Vinci")."""

HONORIFICS = frozenset(
    "lady lord sir dame king queen prince princess count countess duke duchess baron "
    "baroness captain capt father mother brother sister old young master mistress mr mrs ms "
    "miss dr doctor saint st uncle aunt general sergeant professor madam madame lieutenant "
    "chef the a an".split())
"""Words before a name that are not the name itself: dropped when forming aliases."""

NON_NAME_WORDS = frozenset(
    "is are was were be been being has have had will would can could should shall did does "
    "do said says say went go goes left came come arrived saved took gave told asked "
    "thanks thank please hello hi".split())
"""Verbs and interjections that never occur inside a name: a title holding one is a
sentence ("The Dungeon Master has been saved by Percy")."""

STARTERS = frozenset("""
i i'm i've i'll i'd me my mine we us our you your yours he him his she her hers it its they them
their this that these those there here what who whom whose why how when where which whatever
a an the and but or so yet nor if then than as because although though while once since until
unless after before also still just only even not no yes yeah yep nope oh ah aye nay hey
hello hi greetings welcome farewell goodbye bye good well thanks thank please sorry pardon
excuse listen look come go let lets let's tell say do does did don't can can't could would
should will won't shall may might must is are was were be am has have had perhaps maybe
indeed sure certainly of in on at to from by for with without about into over under
again all any some every each many much more most few both either neither nothing something
everything everyone someone anyone nobody somebody anybody today tonight tomorrow yesterday
now soon later never always sometimes often morning evening afternoon night day
monday tuesday wednesday thursday friday saturday sunday january february march april may
june july august september october november december madam mister miss
player dear alas ahem hmm hm huh wow whoa okay ok alright right wait stop help
what's that's there's here's it's he's she's who's where's how's
""".split())
"""Capitalised words that start sentences or address someone without being names
(pronouns, greetings, function words, days and months): dropped from the start of a
candidate span."""

_WORD = re.compile(r"[^\W\d_](?:[\w’'-]*\w)?|\d+", re.UNICODE)
_SPEAKER = re.compile(r"^\s*[^:\n]{1,40}:\s+(?=\S)")
_TRAILING_BRACKET = re.compile(r"\s*[(\[{][^()\[\]{}]*[)\]}]?\s*$")
_QUOTES = "\"'`“”‘’«»„"
_CONTRACTION = re.compile(r"(?:['’](?:ll|re|ve|d|m)|n['’]t)$", re.I)
_ABBREVIATIONS = frozenset("mr mrs ms dr st mt jr sr capt gen sgt prof".split())


def fold(text: str) -> str:
    """Case-folded text with accents kept and every non-word run turned into one space."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    return " ".join(re.findall(r"[^\W_]+", text))


def normalise_title(title: str) -> str:
    """Strip what models wrap around a name; ``""`` when nothing is left.

    Removes, in order: a speaker prefix (``"GINNA: Good to see you!"`` -> ``"Good to see
    you!"``), trailing parenthesised or bracketed parts, closed or not (``"Gina (char)"``,
    ``"Gina (d2"``, ``"Gina [DG]"`` -> ``"Gina"``), surrounding quotes, trailing punctuation
    and extra spaces. A single shouted word is title-cased (``"GINNA"`` -> ``"Ginna"``).
    """
    text = unicodedata.normalize("NFKC", title or "").strip()
    text = _SPEAKER.sub("", text, count=1)
    while True:
        cut = _TRAILING_BRACKET.sub("", text)
        if cut == text:
            break
        text = cut
    text = re.sub(r"[(\[{].*$", "", text)  # an opening bracket left anywhere: cut there
    text = text.strip().strip(_QUOTES).strip()
    text = re.sub(r"[\s.!?,;:\-–—]+$", "", text).strip(_QUOTES).strip()
    text = re.sub(r"\s+", " ", text)
    if " " not in text and len(text) > 3 and text.isupper():
        text = text.capitalize()
    return text


def shape_problem(title: str) -> str | None:
    """Why ``title`` (already normalised) is not name-shaped, or None when it is.

    A name has 1-5 words; no sentence punctuation inside (a period only after an initial or
    an abbreviation such as "St."); no digits glued to letters (``"Souls19B8A43D20"``); not
    several shouted words; no slug shape (``"john-harker"``, underscores); every word
    capitalised except name particles (``PARTICLES``), and the first word capitalised; no
    verb or interjection of ``NON_NAME_WORDS`` (a sentence, not a name); no contraction
    (``"You'll"``, ``"They're"``, ``"Don't"``: a pronoun or verb with ``'ll 're 've 'd 'm
    n't``; a possessive ``'s`` and names such as ``"O'Brien"`` or ``"D'Arcy"`` pass).

    Returns:
        A short English reason (for logs), or None.
    """
    if not title:
        return "empty"
    if "_" in title or re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)+", title):
        return "slug"
    if re.search(r"[^\W\d_]\d|\d[^\W\d_]", title):
        return "digits glued to letters"
    words = title.split()
    if len(words) > 5:
        return "more than 5 words"
    for i, w in enumerate(words):
        core = w.rstrip(".")
        if re.search(r"[!?,;:]", w) or re.search(r"\.\S", w):
            return "sentence punctuation"
        if w.endswith(".") and not (len(core) == 1 or core.casefold() in _ABBREVIATIONS):
            return "sentence punctuation"
    if any(_CONTRACTION.search(w) for w in words):
        return "contraction"
    letters = [w for w in words if re.search(r"[^\W\d_]{2,}", w)]
    if len(letters) >= 2 and all(w.isupper() for w in letters):
        return "shouting"
    folded = [fold(w) for w in words]
    if any(f in NON_NAME_WORDS for f in folded):
        return "sentence shape"
    for i, w in enumerate(words):
        if w[0].isdigit():
            continue
        if not w[0].isupper() and (i == 0 or folded[i] not in PARTICLES):
            return "lower-case word"
    return None


def occurs_in(name: str, text: str) -> bool:
    """Whether ``name`` occurs in ``text`` as whole words, in order, ignoring case,
    accents' composition and punctuation (``"Marta"`` occurs in ``"Marta's boat"``;
    ``"Tobias Crane"`` in ``"tobias  crane,"``; ``"Ann"`` does not occur in ``"Anna"``)."""
    needle = fold(name)
    return bool(needle) and f" {needle} " in f" {fold(text)} "


def name_part(title: str) -> str:
    """The name in an entry's title: normalised and cut at the first comma
    (``"Sir Edward, investigator"`` -> ``"Sir Edward"``;
    ``"Sir John (a knight who died defending the castle)"`` -> ``"Sir John"``)."""
    return normalise_title(normalise_title(title).split(",")[0])


@lru_cache(maxsize=200_000)
def aliases(title: str, entity_type: str) -> tuple[str, ...]:
    """Short forms a text may use for an entry: for a character whose name is capitalised
    and has two or more words, its first and last words that are not honorifics or
    particles (``"Sergeant Ilsa Brenn"`` -> ``("Ilsa", "Brenn")``; ``"Lady Elinor"`` ->
    ``("Elinor",)``), each at least 3 letters; for a title with a descriptive tail, the name
    before the comma. Common-noun titles ("town guard") get none: their words are not names.
    """
    out: list[str] = []
    name = name_part(title)
    if name and fold(name) != fold(title):
        out.append(name)
    if entity_type != "character" or shape_problem(name) is not None:
        return tuple(out)
    words = [w for w in name.split() if fold(w) not in HONORIFICS and fold(w) not in PARTICLES]
    if len(name.split()) >= 2 and words:
        for w in dict.fromkeys((words[0], words[-1])):
            w = re.sub(r"['’]s$", "", w)
            if len(w) >= 3 and fold(w) != fold(name):
                out.append(w)
    return tuple(out)


@lru_cache(maxsize=200_000)
def name_forms(title: str, entity_type: str) -> tuple[str, ...]:
    """The folded forms (:func:`fold`) under which a text names an entry: its title and its
    :func:`aliases`, empty forms left out. Cached: the analysis scope checks a world's
    titles on every turn."""
    return tuple(f for f in (fold(n) for n in (title, *aliases(title, entity_type))) if f)


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t" + _QUOTES)
    return not before or before[-1] in ".!?:;\n-–—(" or before.endswith("...")


def _vocative(text: str, end: int) -> bool:
    """Whether the word ending at ``end`` is followed by ``,`` ``!`` ``?`` or ``:`` (an address
    or a speaker label: "Marta, I brought...", "Gina: hello")."""
    return text[end:end + 1] in (",", "!", "?", ":")


SPLITTERS = frozenset(("and", "in", "at", "on"))
"""Particles that may join two names as well as sit inside one ("Tobias Crane and Marta"
vs "The Gull and Lantern"): a span holding one is also split there."""


def name_spans(text: str, max_words: int = 5) -> list[tuple[str | None, list[str]]]:
    """The candidate names of ``text`` grouped by span: ``[(whole, pieces)]`` where
    ``pieces`` are the names of the span split at ``SPLITTERS`` and ``whole`` the span as one
    name when it holds a splitter ("Gull and Lantern"; None otherwise or when not a name).
    See :func:`candidate_names` for what counts as a name."""
    lower_words = {m.group().casefold() for m in _WORD.finditer(text) if m.group()[0].islower()}
    spans: list[list[tuple[str, int]]] = []
    run: list[tuple[str, int]] = []
    last_end = -1
    for m in _WORD.finditer(text):
        word, start = m.group(), m.start()
        gap = text[last_end:start] if last_end >= 0 else ""
        joined = run and gap.strip() == "" and "\n" not in gap
        cap = word[0].isupper() and not (len(word) > 1 and word.isupper())
        particle = word.casefold() in PARTICLES and word[0].islower()
        if (cap or particle) and joined:
            run.append((word, start))
        else:
            if run:
                spans.append(run)
            run = [(word, start)] if cap else []
        last_end = m.end()
    if run:
        spans.append(run)
    later_caps = {w for span in spans for w, start in span if not _sentence_initial(text, start)}

    def clean(span: list[tuple[str, int]]) -> str | None:
        while span and span[-1][0].casefold() in PARTICLES and span[-1][0][0].islower():
            span = span[:-1]
        while span and (span[0][0].casefold().replace("’", "'") in STARTERS
                        or (_sentence_initial(text, span[0][1])
                            and span[0][0].casefold() in lower_words)):
            span = span[1:]
        if not span or len(span) > max_words:
            return None
        if len(span) == 1 and _sentence_initial(text, span[0][1]) \
                and not _vocative(text, span[0][1] + len(span[0][0])) \
                and span[0][0] not in later_caps:
            return None  # "True enough.": a lone capitalised sentence start is a common word
        if len(span) == 1 and (span[0][0].casefold() in HONORIFICS
                               or span[0][0].casefold().removesuffix("s") in HONORIFICS):
            return None  # "Sir", "Captain", "Captains" used as a form of address
        name = re.sub(r"['’]s$", "", " ".join(w for w, _ in span))
        return name if shape_problem(name) is None else None

    out = []
    for span in spans:
        cuts = [i for i, (w, _) in enumerate(span) if w in SPLITTERS]
        if not cuts:
            out.append((None, [n for n in [clean(span)] if n]))
            continue
        bounds = [-1, *cuts, len(span)]
        pieces = [clean(span[lo + 1:hi]) for lo, hi in pairwise(bounds)]
        out.append((clean(span), [n for n in pieces if n]))
    return out


def candidate_names(text: str, max_words: int = 5) -> list[str]:
    """Name-shaped capitalised spans of ``text``, in order of first occurrence, unique
    (case-folded).

    A span is a run of capitalised words (name particles allowed between them) with no
    punctuation between its words. Dropped: shouted words (all caps), words of ``STARTERS``
    at the start of a span (sentence starters, greetings, pronouns), a sentence-initial
    word that also occurs in lower case in the text (a common word), a possessive ``'s``;
    a lone word at the start of a sentence counts only when it is an address or a speaker
    label (followed by ``,`` ``!`` ``?`` ``:``) or also occurs capitalised inside a sentence
    (without a lexicon, "True enough." and "Harker arrived." cannot be told apart: the
    rule gives up the second to keep the first out). Runs longer than ``max_words`` are not
    names (a headline, a shouted line). A span joined by "and", "in", "at" or "on" gives
    its parts ("Gina in Rome" -> "Gina", "Rome"); :func:`new_candidates` also tries it
    whole against known entries ("The Gull and Lantern").

    Example: ``"Wenna, a deckhand called Tobias Crane came ashore"`` -> ``["Wenna",
    "Tobias Crane"]``; ``"Greetings, I have no idea what you're talking to."`` -> ``[]``.
    """
    out: dict[str, str] = {}
    for _whole, pieces in name_spans(text, max_words):
        for name in pieces:
            out.setdefault(fold(name), name)
    return list(out.values())


FUZZY_NAME_MIN = 90.0
"""rapidfuzz ``token_sort_ratio`` (0-100) at or above which two names are the same entity
("Lady Elinore" = "Lady Elinor")."""
NEAR_NAME_MIN = 85.0
"""rapidfuzz ``ratio`` (0-100) of the names without honorifics at or above which a new name
is a spelling variant of a known one ("Ginna" ~ "Gina": 88.9) that cannot be told apart
from it: neither created nor attributed."""


@lru_cache(maxsize=200_000)
def _prepared(title: str) -> tuple[str, str, frozenset[str]]:
    """``(name part, bare name, content words)`` of a title, cached: a world's titles are
    compared again on every creation. The bare name drops a leading article; content words
    drop honorifics, particles and a possessive ``s``."""
    name = name_part(title)
    words = fold(name).split()
    content = frozenset(w for w in words if w not in HONORIFICS and w not in PARTICLES and w != "s")
    while words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return name, " ".join(words), content


def _content_tokens(title: str) -> frozenset[str]:
    return _prepared(title)[2]


def _bare(title: str) -> str:
    return _prepared(title)[1]


def match_known(title: str, entity_type: str,
                known: list[tuple[int, str, str]]) -> tuple[str, list[int]]:
    """How ``title`` (a new entity of ``entity_type``) relates to ``known`` entries
    ``[(id, title, entity_type)]``, compared across entity types.

    Returns ``(how, ids)``, the first rule that applies:

    - ``("exact", [id])``: same name once case, punctuation, a leading article and a
      descriptive tail are ignored ("The Quay" = "quay"; "Sir Edward" = "Sir Edward,
      investigator"; a location "Transylvania" = a character "Transylvania");
    - ``("variant", [id])``: the same name words without honorifics, or a first name or
      surname of a known character, or a known first name of a new character ("Gina" =
      "Gina Smith", "Ilsa" = "Sergeant Ilsa Brenn", "Lord Varga" = "Lord Casimir Varga");
    - ``("fuzzy", [id])``: rapidfuzz ``token_sort_ratio`` >= ``FUZZY_NAME_MIN``;
    - ``("ambiguous", ids)``: the variant rule names several entries ("Edward" with "Sir
      Edward" and "Edward Hyde");
    - ``("near", [id])``: a spelling variant (ratio >= ``NEAR_NAME_MIN``, names of 4+
      letters; a one-word name is also compared with characters' first names and surnames:
      "Mara" ~ "Marta Vell");
    - ``("", [])``: a new name.
    """
    from rapidfuzz import fuzz, process, utils

    if not known:
        return "", []
    bare = _bare(title)
    exact = [k for k in known if bare and _bare(k[1]) == bare]
    if exact:
        same_type = [k for k in exact if k[2] == entity_type]
        return "exact", [(same_type or exact)[0][0]]
    mine = _content_tokens(title)
    if mine:
        equal, subset = [], []
        for k in known:
            theirs = _content_tokens(k[1])
            if not theirs:
                continue
            if theirs == mine:
                equal.append(k)
            elif (mine < theirs and k[2] == "character") or \
                    (theirs < mine and entity_type == "character" and k[2] == "character"):
                subset.append(k)
        hits = equal or subset
        if len(hits) == 1:
            return "variant", [hits[0][0]]
        if hits:
            return "ambiguous", [k[0] for k in hits]
    choices = {k[0]: _prepared(k[1])[0] for k in known}
    best = process.extractOne(name_part(title), choices, scorer=fuzz.token_sort_ratio,
                              processor=utils.default_process, score_cutoff=FUZZY_NAME_MIN)
    if best is not None:
        return "fuzzy", [best[2]]
    if len(" ".join(mine)) >= 4:
        forms = [(k[0], " ".join(sorted(_content_tokens(k[1])))) for k in known]
        if len(mine) == 1:  # a lone name also against a character's first name and surname
            forms += [(k[0], t) for k in known if k[2] == "character"
                      for t in _content_tokens(k[1]) if len(t) >= 4]
        near = process.extractOne(" ".join(sorted(mine)), [f for _, f in forms],
                                  scorer=fuzz.ratio, score_cutoff=NEAR_NAME_MIN)
        if near is not None:
            return "near", [forms[near[2]][0]]
    return "", []


def new_candidates(text: str, entity_type: str, known: list[tuple[int, str, str]]) -> list[str]:
    """The names of :func:`candidate_names` in ``text`` that are not a known entry or a
    variant of one (:func:`match_known` finds nothing): the names a creation may take. A
    span that is a known name as a whole ("the Gull and Lantern") gives no parts."""
    out: dict[str, str] = {}
    for whole, pieces in name_spans(text):
        if whole and match_known(whole, entity_type, known)[0] in ("exact", "fuzzy"):
            continue
        for name in pieces:
            if fold(name) not in out and match_known(name, entity_type, known)[0] == "":
                out[fold(name)] = name
    return list(out.values())


def fitting(names: list[str], title: str, summary: str) -> list[str]:
    """The ``names`` that fit a creation: they share a word (honorifics aside) with the
    model's ``title``, or occur in its ``summary``."""
    words = _content_tokens(title)
    return [n for n in names if (_content_tokens(n) & words) or occurs_in(n, summary)]


LOCATIVES = frozenset(
    "in at into inside near across through toward towards outside within beyond".split())
"""Prepositions that put a place after them ("lives in Munich", "waits at the Rusty
Anchor"); people rarely follow them."""
PERSONAL_TITLES = HONORIFICS - frozenset(("old", "young", "the", "a", "an", "saint", "st",
                                          "master", "chef"))
"""Honorifics that only people carry: a name starting with one is not a place or an item."""


def fits_type(name: str, entity_type: str, text: str) -> bool:
    """Whether ``name`` can be an entity of ``entity_type`` by the cues of ``text`` (no NER):
    a character's name is not one that ``text`` only ever puts after a locative
    preposition (``LOCATIVES``: "born in Transylvania", "arrived at Bran Castle"); a
    location's or item's name does not start with a personal title (``PERSONAL_TITLES``:
    "Lord Varga", "Sergeant Brenn"). Unknown cues: True."""
    words = fold(name).split()
    if not words:
        return False
    if entity_type != "character":
        return words[0] not in PERSONAL_TITLES
    folded = fold(text).split()
    n = len(words)
    before = [folded[i - 1] if i and folded[i - 1] not in ("the", "a", "an") else
              (folded[i - 2] if i >= 2 else "")
              for i in range(len(folded) - n + 1) if folded[i:i + n] == words]
    return not before or not all(b in LOCATIVES for b in before)
