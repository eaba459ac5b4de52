"""Lore-consistency guard: precision, recall and added latency per reply on a labelled set.

    python -m bench canon

The set (``evaluation/data/canon_replies.json``, 40 replies written for this project: half on
the Saltmere example world, half on the LIGHT world ``dragon-village`` read from
``$SHARED_DIR/data/light``, default ``../shared/data/light``) labels each reply consistent or
contradicting with its NPC's base lore and the lore entries retrieved for the turn. The guard
(``memory.canon``, the rules of ``LORE_GUARD=rules``) flags a reply when it finds a
contradiction; a flag on a contradicting reply is a true positive.

Baseline, measured in the same run: a keyword guard that flags every reply holding a
negation or death word (``not``, ``never``, ``no``, ``dead``, ``died``...) next to a word of the
canon, the cheap guard a team might write first. The no-guard pass-through flags nothing
(recall 0). Latency: the guard's time per reply (fact extraction plus check), in ms, median
and p95 of the set run ``REPEAT`` times. The model pass (``rules+model``) is not measured
here: on the zero-latency model server its verdicts mean nothing; see the README for its
figures on the embedded model.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path

from bench.common import ROOT, Result, Target, dist

DATA = ROOT / "evaluation" / "data" / "canon_replies.json"
REPEAT = 20


def shared_dir() -> Path:
    """``$SHARED_DIR`` or ``../shared`` beside the repository."""
    return Path(os.environ.get("SHARED_DIR") or ROOT.parent / "shared")


@lru_cache(maxsize=None)
def _world(name: str) -> dict[str, dict]:
    """Entries of a set's world by key: ``{key: {title, content, entity_type}}``.

    Raises:
        FileNotFoundError: the LIGHT world is not under the shared data folder.
        ValueError: an unknown world name.
    """
    if name == "saltmere":
        from memory.importers.examples import load_example

        spec = load_example()[0]
    elif name.startswith("light:"):
        from memory.importers.light import load_light_world

        spec = load_light_world(shared_dir() / "data" / "light" / f"{name[6:]}.json")
    else:
        raise ValueError(f"unknown world {name!r} in the canon set")
    return {e.key: {"key": e.key, "title": e.title, "content": e.content,
                    "entity_type": e.entity_type} for e in spec.entries}


def load_set(path: Path = DATA) -> list[dict]:
    """The labelled replies with their canon resolved: each item of the file plus ``npc_entry``
    (the NPC's entry dict) and ``docs`` (``[(title, content)]`` of the retrieved keys).

    Raises:
        KeyError: an NPC or retrieved key that its world does not hold.
    """
    items = json.loads(path.read_text())["items"]
    out = []
    for it in items:
        entries = _world(it["world"])
        out.append({**it, "npc_entry": entries[it["npc"]],
                    "docs": [(entries[k]["title"], entries[k]["content"])
                             for k in it["retrieved"]]})
    return out


def rules_guard(item: dict) -> str | None:
    """The rules pass: the first contradiction described, or None."""
    from memory.canon import check_reply, extract_facts

    facts = extract_facts(item["npc_entry"], item["docs"])
    found = check_reply(item["reply"], facts, item["npc_entry"]["title"])
    return found[0].describe() if found else None


_KEYWORD = re.compile(r"\b(?:not|never|no|n't|dead|died|killed|slain|drowned|don't)\b", re.I)


def keyword_guard(item: dict) -> str | None:
    """Baseline: a negation or death word and any capitalized word of the canon in one reply."""
    canon = " ".join([item["npc_entry"]["content"]] + [d for _, d in item["docs"]])
    names = {w.lower() for w in re.findall(r"\b[A-Z][a-z]{2,}\b", canon)}
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", item["reply"])}
    return "keyword" if _KEYWORD.search(item["reply"]) and names & words else None


def score(items: list[dict], guard) -> dict:
    """Precision, recall, F1 and flagged count of ``guard`` on ``items``, and its time per reply
    (ms over ``REPEAT`` passes)."""
    tp = fp = fn = 0
    wrong = []
    for it in items:
        flagged = guard(it) is not None
        positive = it["label"] == "contradiction"
        tp += flagged and positive
        fp += flagged and not positive
        fn += positive and not flagged
        if flagged != positive:
            wrong.append(f"{'FP' if flagged else 'FN'} {it['npc']}: {it['reply'][:60]}")
    times = []
    for _ in range(REPEAT):
        for it in items:
            t = time.perf_counter()
            guard(it)
            times.append((time.perf_counter() - t) * 1000)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if tp and precision + recall else 0.0)
    d = dist(times, 4)
    return {"replies": len(items), "flagged": tp + fp, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3),
            "ms_p50": d["p50"], "ms_p95": d["p95"], "_wrong": wrong}


def run(env, quick: bool) -> Result:
    """Score the rules guard and the keyword baseline on the set (``env`` is not used: no
    service is needed)."""
    items = load_set()
    rows = []
    for name, world in (("all", None), ("saltmere", "saltmere"),
                        ("light", "light:dragon-village")):
        sub = [it for it in items if world is None or it["world"] == world]
        row = score(sub, rules_guard)
        wrong = row.pop("_wrong")
        rows.append({"guard": "rules", "set": name, **row})
        if name == "all":
            misses = wrong
    base = score(items, keyword_guard)
    base.pop("_wrong")
    all_row = rows[0]
    return Result(
        "canon", rows, baseline={"guard": "keyword", "set": "all", **base},
        ratio=round(all_row["f1"] / base["f1"], 2) if base["f1"] else None,
        targets=[Target("rules precision", all_row["precision"], ">=", 0.9),
                 Target("rules recall", all_row["recall"], ">=", 0.6),
                 Target("rules ms per reply p95", all_row["ms_p95"], "<=", 5, "ms")],
        notes="ratio: F1 of the rules over F1 of the keyword baseline. Misclassified: "
              + "; ".join(misses),
        params={"dataset": str(DATA.relative_to(ROOT)), "repeat": REPEAT})


def measure_embedded(limit: int | None = None, threads: int = 1,
                     model_pass: bool = True) -> dict:
    """The model pass and real replies on the embedded model (llama.cpp serving
    SmolLM2-135M-Instruct, started here on a free port; ``threads`` CPU threads).

    Returns ``{"model_pass": score row of inference.calls.check_canon on the set,
    "replies": {...}}``: for each item's NPC, retrieved documents and player line, one reply
    generated as a turn would (``generate_reply``), the share the rules flag, the generation
    time (ms, the cost of one regeneration) and, for flagged replies, whether the one
    regeneration with the fact stated passes the rules. ``model_pass`` False: replies only.
    """
    import subprocess

    from inference import calls
    from inference.llm import ModelError, chat_model
    from settings import environment
    from workers.embedded import free_port, llm_argv, stop_process, wait_http

    items = load_set()
    if limit:  # an even sample over both worlds
        items = items[::max(1, len(items) // limit)][:limit]
    port = free_port()
    proc = subprocess.Popen(llm_argv(port, "smollm2-135m-instruct", 2048, threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 120)
        with environment({"LLM_BASE_URL": f"http://127.0.0.1:{port}/v1"}, clear=(chat_model,)):
            def model_guard(it: dict) -> str | None:
                lore = "\n".join([it["npc_entry"]["content"]]
                                 + [f"{t}: {d}" for t, d in it["docs"]])
                t = time.perf_counter()
                try:
                    got = calls.check_canon(it["npc_entry"]["title"], lore, it["player"],
                                            it["reply"])
                except ModelError:
                    got = None
                print(f"model pass {(time.perf_counter() - t) * 1000:.0f} ms: "
                      f"{it['label']} -> {'flag' if got else 'pass'}", file=sys.stderr,
                      flush=True)
                return got

            global REPEAT
            saved, REPEAT = REPEAT, 1
            model_row = None
            try:
                if model_pass:
                    model_row = score(items, model_guard)
                    model_row.pop("_wrong")
            finally:
                REPEAT = saved
            flagged = resolved = 0
            gen_ms = []
            seen = set()
            for it in items:
                key = (it["world"], it["npc"], it["player"])
                if key in seen:
                    continue
                seen.add(key)
                prompt = dict(npc=it["npc_entry"], note="", recent=[], retrieved=it["docs"],
                              player_text=it["player"], max_tokens=60)
                t = time.perf_counter()
                reply = calls.generate_reply(**prompt)
                gen_ms.append((time.perf_counter() - t) * 1000)
                print(f"reply {gen_ms[-1]:.0f} ms: {reply.text[:100]!r}", file=sys.stderr,
                      flush=True)
                from memory.canon import check_reply, extract_facts, fact_prompt

                facts = extract_facts(it["npc_entry"], it["docs"])
                found = check_reply(reply.text, facts, it["npc_entry"]["title"])
                if found:
                    flagged += 1
                    again = calls.generate_reply(**prompt, canon=fact_prompt(found))
                    ok = not check_reply(again.text, facts, it["npc_entry"]["title"])
                    resolved += ok
                    print(f"  flagged: {found[0].describe()[:100]!r}; again "
                          f"{'passes' if ok else 'still contradicts'}: {again.text[:80]!r}",
                          file=sys.stderr, flush=True)
            replies = {"replies": len(seen), "flagged_by_rules": flagged,
                       "resolved_by_one_regeneration": resolved,
                       "generation_ms": dist(gen_ms, 0)}
    finally:
        stop_process(proc)
    return {"model_pass": model_row, "replies": replies}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.canon",
                                 description="the guard on the embedded model (SmolLM2 on CPU)")
    ap.add_argument("--limit", type=int, default=None, help="first N items of the set")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp CPU threads")
    ap.add_argument("--replies-only", action="store_true", help="skip the model pass")
    args = ap.parse_args()
    print(json.dumps(measure_embedded(args.limit, args.threads, not args.replies_only),
                     indent=2))
