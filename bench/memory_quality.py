"""Memory quality: does the session memory put the answer in front of the model, at an equal
character budget, better than plain retrieval over what was said?

    python -m bench memory_quality [--dataset PATH] [--quick] [--budget CHARS] [--k N]
                                   [--backend auto|llamacpp|configured|zero]
    npc-memory evaluate --dataset PATH        (the same function)

For each conversation of the dataset (``evaluation/dataset.py``; default the shipped
``evaluation/data/npc_conversations.json``) the run imports a world holding its two speakers
as characters (one line of base lore each), opens a session (player name: ``speaker_a``) and
replays the sessions in order as ``POST /v1/sessions/{id}/events``
(``evaluation.dataset.replay_events``: a line and the other speaker's answer make one event
addressed to the answering speaker's NPC; ``event_id`` the dia ids joined by ``|``;
``created_at`` from the session's ``date_time``). It waits for the queues to drain (analysis,
note_update, entity_creation, embed, archive; up to the drain limit, reporting what was still
queued if it passes), then asks every question at the character budget ``B`` (``--budget``,
default 1200):

- ours: ``GET /v1/sessions/{id}/search?q=<question>&k=<k>&max_chars=B`` (documents and
  evidence fused, taken in rank order while the texts' lengths sum to at most B);
- baseline: the raw utterances ``"Speaker: text"`` embedded with the same embedder
  (``inference.embedding.get_embedder()``), ranked by cosine to the question, taken in rank
  order while the lengths sum to at most B (top ``k`` at most);
- whole memory: every document and evidence text of ``GET /v1/sessions/{id}/memory``;
- all raw turns: every utterance replayed.

Answer in context (``evaluation.dataset.answer_in_context``): every content token of the gold
answer (lower-cased, punctuation stripped, stopwords removed, numbers kept) is a token of the
context. Evidence recall: a retrieved item's provenance holds a gold evidence dia id (an
evidence item: its event's dia id of its part; a document: the dia ids of its ``turn_ids``).
Created entities (the session's ``is_dynamically_generated`` lore entries): precision = the
share whose title occurs in the conversation (word-bounded, case-folded) and is name-shaped
(1-5 words, none of ``, ; : ! ? "`` and no full stop inside); duplicate rate = the share whose
normalised title (case-folded, punctuation dropped, no leading article) equals, or matches
with rapidfuzz ratio >= 90, the title of a base entry of the world or of an earlier creation.
Cost: model tokens of the sessions' tasks (task ledger) per ingested event; events accepted
per minute (posting) and processed per minute (first post to drained); seconds from the last
post to drained.

Targets: ours >= baseline (answer in context); whole memory >= 95% of all raw turns;
entity precision >= 0.9; duplicate rate <= 2%. ``--quick``: the first conversation, its first
2 sessions (and the questions whose evidence lies there).

Model backend (``--backend``): ``auto`` uses the configured model servers when the
environment names one (``LLM_BASE_URL``, ``LLM_BACKEND=mistral``, a role's ``*_BASE_URL``),
else ``llamacpp``: the embedded llama.cpp server with SmolLM2-135M (as ``real_model``) and
the local MiniLM embedder; ``zero``: the suite's zero-latency stand-in (a smoke run of the
plumbing; its quality figures mean nothing).
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from bench.common import Env, Result, Target, console, print_table

DEFAULT_BUDGET = 1200
"""Characters of context each retrieval may fill (``--budget``)."""
DEFAULT_K = 200
"""Most items a retrieval may return before the budget cuts (``--k``, 1..200)."""
DRAIN_QUEUES = ("analysis", "note_update", "entity_creation", "embed", "archive")
ALIAS = "smollm2-135m-instruct"
BACKENDS = ("auto", "llamacpp", "configured", "zero")
OPTIONS = ("dataset", "budget", "k", "backend", "drain_timeout")
"""Keyword options ``bench.__main__`` passes to :func:`run`."""

_MODEL_VARS = re.compile(r"^(LLM_|GENERATION_|ANALYSIS_|MAINTENANCE_|MISTRAL_|EMBEDD)")


# ---------------------------------------------------------------------------- backend


def _model_env(env: Env, backend: str) -> tuple[str, dict[str, str]]:
    """``(backend actually used, variables for every process)``; see the module docstring."""
    outer = getattr(env, "outer_env", {})
    if backend == "auto":
        configured = outer.get("LLM_BASE_URL") or outer.get("LLM_BACKEND") == "mistral" or any(
            outer.get(f"{r}_BASE_URL") for r in ("GENERATION", "ANALYSIS", "MAINTENANCE"))
        backend = "configured" if configured else "llamacpp"
    if backend == "zero":
        return backend, {}
    if backend == "configured":
        picked = {k: v for k, v in outer.items() if _MODEL_VARS.match(k)}
        # the settings' defaults for what the suite's environment points at its zero server
        llm_url = outer.get("LLM_BASE_URL", "http://127.0.0.1:8089/v1")
        return backend, {"GENERATION_MODEL": "", "ANALYSIS_MODEL": "", "MAINTENANCE_MODEL": "",
                         "LLM_BACKEND": "llamacpp", "LLM_MODEL": ALIAS, "LLM_BASE_URL": llm_url,
                         "EMBEDDER": "minilm", "EMBEDDING_MODEL": "mistral-embed",
                         "EMBEDDING_BASE_URL": llm_url, **picked}
    if backend == "llamacpp":
        return backend, {"LLM_BACKEND": "llamacpp", "LLM_MODEL": ALIAS, "GENERATION_MODEL": "",
                         "ANALYSIS_MODEL": "", "MAINTENANCE_MODEL": "", "EMBEDDER": "minilm",
                         "LLM_MAX_RETRIES": "2"}
    raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")


def _process_env(values: dict[str, str]):
    """Set ``values`` in this process's environment (and reload the cached settings and
    embedder) for the block; restore afterwards (``settings.environment``)."""
    from inference.embedding import get_embedder
    from settings import environment

    return environment(values, clear=(get_embedder,))


def _start_llamacpp(env: Env) -> tuple[subprocess.Popen, str]:
    from workers.embedded import free_port, llm_argv, wait_http

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = open(env.tmp / "memory_quality-llm.log", "wb")
    # one thread, as real_model and the tests run it (llama.cpp's threads spin)
    proc = subprocess.Popen(llm_argv(port, ALIAS, 2048, 1), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    wait_http(f"{url}/models", 180)
    return proc, url


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------- pieces


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def world_spec(conv, key: str):
    """The world of one conversation: its two speakers as characters (keys: slugs of their
    names), each with a one-line base lore naming the other."""
    from memory.importers.spec import EntitySpec, WorldSpec

    a, b = conv.speaker_a, conv.speaker_b
    entries = (EntitySpec(_slug(a), "character", a, f"{a} is a character who talks with {b}.", ()),
               EntitySpec(_slug(b), "character", b, f"{b} is a character who talks with {a}.", ()))
    return WorldSpec(key, f"Conversation {conv.sample_id}", "memory-quality benchmark world",
                     entries, "evaluation dataset conversation")


def pack(texts: list[str], budget: int, k: int) -> list[int]:
    """Indices of ``texts`` (in rank order) taken while the sum of their lengths stays <=
    ``budget`` characters, at most ``k``; stops at the first text that does not fit."""
    out, used = [], 0
    for i, t in enumerate(texts[:k]):
        if used + len(t) > budget:
            break
        out.append(i)
        used += len(t)
    return out


def _norm_title(title: str) -> str:
    t = re.sub(r"[^0-9a-z]+", " ", title.casefold()).split()
    if t and t[0] in ("the", "a", "an"):
        t = t[1:]
    return " ".join(t)


def name_shaped(title: str) -> bool:
    """1-5 words, none of ``, ; : ! ? "``, no full stop followed by more text."""
    words = title.split()
    return 1 <= len(words) <= 5 and not re.search(r"[,;:!?\"]|\.\s*\S", title)


def title_in_text(title: str, text: str) -> bool:
    """``title`` occurs in ``text`` word-bounded, case-folded."""
    t = title.strip().casefold()
    return bool(t) and re.search(r"(?<!\w)" + re.escape(t) + r"(?!\w)", text.casefold()) is not None


def entity_quality(created: list[dict], base_titles: dict[int, list[str]],
                   conv_text: dict[int, str]) -> dict:
    """Precision and duplicate rate of created entries.

    Args:
        created: ``[{"world_id", "title", ...}]`` in creation order.
        base_titles: world id -> titles of its base entries.
        conv_text: world id -> the conversation's text.

    Returns:
        ``{"created", "precise", "precision", "duplicates", "duplicate_rate", "entities"}``
        (rates None when nothing was created); ``entities`` repeats ``created`` with
        ``grounded``, ``name_shaped`` and ``duplicate_of`` added.
    """
    from rapidfuzz import fuzz

    seen: dict[int, list[str]] = {w: list(t) for w, t in base_titles.items()}
    out, precise, dups = [], 0, 0
    for e in created:
        w, title = e["world_id"], e["title"]
        grounded = title_in_text(title, conv_text.get(w, ""))
        shaped = name_shaped(title)
        n = _norm_title(title)
        dup = next((o for o in seen.setdefault(w, [])
                    if n and (n == _norm_title(o) or fuzz.ratio(n, _norm_title(o)) >= 90)), None)
        precise += grounded and shaped
        dups += dup is not None
        seen[w].append(title)
        out.append({**e, "grounded": grounded, "name_shaped": shaped, "duplicate_of": dup})
    n = len(created)
    return {"created": n, "precise": precise, "precision": round(precise / n, 4) if n else None,
            "duplicates": dups, "duplicate_rate": round(dups / n, 4) if n else None,
            "entities": out}


def item_dia_ids(hit: dict, turn_dia: dict[str, tuple[str, ...]]) -> set[str]:
    """The dia ids a search hit comes from: an evidence hit's event id part (``part`` 0: the
    first id, 1: the second), a document hit's ``turn_ids`` mapped through ``turn_dia``."""
    if hit.get("kind") == "evidence":
        ids = (hit.get("event_id") or "").split("|")
        part = hit.get("part") or 0
        ids = [i for i in ids if i]
        return {ids[min(part, len(ids) - 1)]} if ids else set()
    out: set[str] = set()
    for t in hit.get("turn_ids") or ():
        out.update(turn_dia.get(t, ()))
    return out


def _rate(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


# ---------------------------------------------------------------------------- run


def run(env: Env, quick: bool, dataset: str | Path | None = None, budget: int = DEFAULT_BUDGET,
        k: int = DEFAULT_K, backend: str = "auto", drain_timeout: float | None = None) -> Result:
    """Run the benchmark (see the module docstring) in ``env``.

    Args:
        dataset: dataset file (default ``evaluation/data/npc_conversations.json``).
        budget: context characters per retrieval (> 0).
        k: most items per retrieval, 1..200.
        backend: ``auto``, ``llamacpp``, ``configured`` or ``zero``.
        drain_timeout: seconds to wait for the queues (default 900 quick, 7200 full).

    Returns:
        A ``Result``: ``rows`` one per category plus ``overall`` (answer-in-context rates and
        evidence recall of ours, baseline, whole memory, all raw turns); ``params`` holds
        ``per_question``, ``per_category``, ``entities``, ``ingest`` and ``search_contract``
        (False when the server's ``/search`` or ``/memory`` lacks the evidence fields: then
        the ours and whole-memory figures are None).

    Raises:
        evaluation.dataset.DatasetError: an invalid dataset; ValueError: bad options;
        RuntimeError: a process of the stack did not start.
    """
    from evaluation.dataset import DEFAULT_DATASET, load_dataset

    if budget <= 0 or not 1 <= k <= 200:
        raise ValueError("budget must be > 0 and 1 <= k <= 200")
    path = Path(dataset) if dataset else DEFAULT_DATASET
    convs = load_dataset(path)
    if quick:
        convs = [convs[0].truncated(2)]
    drain_s = drain_timeout or (900.0 if quick else 7200.0)
    used_backend, model_env = _model_env(env, backend)
    llm = None
    procs = []
    try:
        if used_backend == "llamacpp":
            llm, url = _start_llamacpp(env)
            model_env["LLM_BASE_URL"] = url
        with _process_env(model_env):
            res = _measure(env, convs, budget, k, drain_s, model_env, procs)
    finally:
        for p in reversed(procs):
            p.stop()
        _stop(llm)
    from settings import get_settings

    with _process_env(model_env):
        cfg = get_settings()
        models = {"generation": cfg.generation_model or cfg.llm_model,
                  "analysis": cfg.analysis_model or cfg.llm_model,
                  "maintenance": cfg.maintenance_model or cfg.llm_model,
                  "embedder": cfg.embedder}
    res.params.update({"dataset": str(path), "budget_chars": budget, "k": k,
                       "backend": used_backend, "models": models, "drain_limit_s": drain_s})
    return res


def _measure(env: Env, convs, budget: int, k: int, drain_s: float, model_env: dict,
             procs: list) -> Result:
    import numpy as np
    from sqlalchemy import func, select

    from evaluation.dataset import answer_in_context, replay_events
    from inference.embedding import get_embedder
    from memory.db import session_scope
    from memory.vectors import embed_world_base
    from memory.worlds import base_entries, import_world
    from models import LoreEntry, TaskRecord

    embedder = get_embedder()
    run_tag = uuid.uuid4().hex[:6]
    worlds = []
    with session_scope() as s:
        for conv in convs:
            spec = world_spec(conv, f"memqa-{_slug(conv.sample_id)[:40]}-{run_tag}")
            world, _ = import_world(s, spec)
            embed_world_base(s, env.r(), embedder, world.id)
            worlds.append({"id": world.id, "key": world.key,
                           "base_titles": [e.title for e in base_entries(s, world.id)]})
    env.reset_queues()
    procs.append(env.web("memqa-web", **model_env))
    procs.append(env.worker("memqa-worker", "analysis,note_update,entity_creation", 1,
                            "prefork", **model_env))
    procs.append(env.worker("memqa-embedder", "embed,archive", 1, "prefork", **model_env))
    base = procs[0].url
    client = httpx.Client(base_url=base, headers=env.headers(), timeout=300)

    # ---- ingest
    sessions: list[dict] = []
    n_events = 0
    t_first = time.monotonic()
    for conv, w in zip(convs, worlds):
        r = client.post("/v1/sessions", json={"world": w["key"], "player_name": conv.speaker_a})
        r.raise_for_status()
        sid = r.json()["session_id"]
        turn_dia: dict[str, tuple[str, ...]] = {}
        for ev in replay_events(conv):
            body = {"npc_id": _slug(ev.listener), "text": ev.text, "speaker": ev.speaker,
                    "event_id": ev.event_id, "created_at": ev.created_at}
            if ev.npc_text:
                body["npc_text"] = ev.npc_text
            r = client.post(f"/v1/sessions/{sid}/events", json=body)
            r.raise_for_status()
            turn_dia[r.json()["turn_id"]] = ev.dia_ids
            n_events += 1
        sessions.append({"conv": conv, "world": w, "sid": sid, "turn_dia": turn_dia})
    t_last = time.monotonic()
    drained_at = env.wait_drained(drain_s, queues=DRAIN_QUEUES, poll=0.25)
    queued = {}
    if drained_at is None:
        rr = env.r()
        queued = {q: rr.llen(q) for q in DRAIN_QUEUES} | {"reserved": rr.hlen("unacked")}
        console.print(f"[yellow]memory_quality: not drained after {drain_s:.0f} s; still "
                      f"queued {queued}[/yellow]")

    # ---- the session memory, and whether the server speaks the evidence contract
    contract = True
    memory: dict[str, dict] = {}
    for sess in sessions:
        r = client.get(f"/v1/sessions/{sess['sid']}/memory")
        if r.status_code != 200:
            contract = False
            break
        memory[sess["sid"]] = r.json()

    # ---- questions
    per_q: list[dict] = []
    for sess in sessions:
        conv, sid = sess["conv"], sess["sid"]
        utts = conv.utterances()
        raw_texts = [f"{u.speaker}: {u.text}" for u in utts]
        raw_all = "\n".join(raw_texts)
        raw_vecs = np.asarray(embedder.embed(raw_texts), dtype=np.float32)
        mem = memory.get(sid)
        whole = None if mem is None else "\n".join(
            [d.get("text") or "" for d in mem.get("documents", [])]
            + [e.get("text") or "" for e in mem.get("evidence", [])])
        for q in conv.qa:
            gold = set(q.evidence)
            qv = np.asarray(embedder.embed([q.question]), dtype=np.float32)[0]
            order = np.argsort(-(raw_vecs @ qv), kind="stable").tolist()
            picked = [order[i] for i in pack([raw_texts[j] for j in order], budget, k)]
            base_ctx = "\n".join(raw_texts[j] for j in picked)
            row = {"sample_id": conv.sample_id, "question": q.question, "answer": q.answer,
                   "category": q.category, "evidence": list(q.evidence),
                   "baseline": {"in_context": answer_in_context(q.answer, base_ctx),
                                "evidence_hit": bool(gold & {utts[j].dia_id for j in picked}),
                                "items": len(picked), "chars": sum(len(raw_texts[j]) for j in picked),
                                "dia_ids": [utts[j].dia_id for j in picked]},
                   "all_raw_turns": {"in_context": answer_in_context(q.answer, raw_all),
                                     "chars": len(raw_all)},
                   "whole_memory": {"in_context": None if whole is None
                                    else answer_in_context(q.answer, whole),
                                    "chars": None if whole is None else len(whole)},
                   "ours": {"in_context": None, "evidence_hit": None, "items": None,
                            "chars": None, "dia_ids": None, "kinds": None}}
            if contract:
                r = client.get(f"/v1/sessions/{sid}/search",
                               params={"q": q.question, "k": k, "max_chars": budget})
                hits = r.json().get("hits", []) if r.status_code == 200 else None
                if hits is None or any("kind" not in h or "text" not in h for h in hits):
                    contract = False
                else:
                    ctx = "\n".join(h["text"] for h in hits)
                    got = set().union(*(item_dia_ids(h, sess["turn_dia"]) for h in hits)) \
                        if hits else set()
                    row["ours"] = {"in_context": answer_in_context(q.answer, ctx),
                                   "evidence_hit": bool(gold & got), "items": len(hits),
                                   "chars": sum(len(h["text"]) for h in hits),
                                   "dia_ids": sorted(got),
                                   "kinds": {kd: sum(h["kind"] == kd for h in hits)
                                             for kd in ("document", "evidence")}}
            per_q.append(row)
    client.close()
    if not contract:
        for row in per_q:
            row["ours"] = {"in_context": None, "evidence_hit": None, "items": None,
                           "chars": None, "dia_ids": None, "kinds": None}
            row["whole_memory"] = {"in_context": None, "chars": None}

    # ---- created entities and model tokens, from the database
    sids = [s["sid"] for s in sessions]
    with session_scope() as s:
        created = [{"world_id": e.world_id, "session_id": e.created_in_session_id, "key": e.key,
                    "title": e.title, "entity_type": e.entity_type}
                   for e in s.scalars(select(LoreEntry).where(
                       LoreEntry.is_dynamically_generated.is_(True),
                       LoreEntry.created_in_session_id.in_(sids)).order_by(LoreEntry.id))]
        tokens = {name: int(n or 0) for name, n in s.execute(
            select(TaskRecord.task_name, func.sum(TaskRecord.tokens_used))
            .where(TaskRecord.session_id.in_(sids)).group_by(TaskRecord.task_name)).all()}
    ents = entity_quality(created, {x["world"]["id"]: x["world"]["base_titles"] for x in sessions},
                          {x["world"]["id"]: "\n".join(u.text for u in x["conv"].utterances())
                           for x in sessions})

    # ---- tables
    def summary(rows: list[dict], label: str) -> dict:
        ours = _rate([r["ours"]["in_context"] for r in rows])
        raw = _rate([r["all_raw_turns"]["in_context"] for r in rows])
        whole = _rate([r["whole_memory"]["in_context"] for r in rows])
        return {"category": label, "questions": len(rows),
                "ours": ours, "baseline": _rate([r["baseline"]["in_context"] for r in rows]),
                "whole_memory": whole, "all_raw_turns": raw,
                "ours_evidence_recall": _rate([r["ours"]["evidence_hit"] for r in rows]),
                "baseline_evidence_recall": _rate([r["baseline"]["evidence_hit"] for r in rows])}

    cats = sorted({r["category"] for r in per_q})
    rows = [summary([r for r in per_q if r["category"] == c], c) for c in cats]
    overall = summary(per_q, "overall")
    rows.append(overall)
    post_s = t_last - t_first
    ingest = {"events": n_events, "sessions": sum(len(c.sessions) for c in convs),
              "conversations": len(convs), "post_seconds": round(post_s, 2),
              "events_per_min": round(n_events / post_s * 60, 1) if post_s > 0 else None,
              "events_per_min_processed": round(n_events / (drained_at - t_first) * 60, 2)
              if drained_at and drained_at > t_first else None,
              "drained": drained_at is not None,
              "drain_seconds": round(drained_at - t_last, 1) if drained_at else None,
              "queued_at_timeout": queued or None,
              "model_tokens": sum(tokens.values()), "model_tokens_by_task": tokens,
              "tokens_per_event": round(sum(tokens.values()) / n_events, 1) if n_events else None}
    figures = {"entity_precision": ents["precision"], "duplicate_rate": ents["duplicate_rate"],
               "entities_created": ents["created"], "tokens_per_event": ingest["tokens_per_event"],
               "events_per_min": ingest["events_per_min"],
               "events_per_min_processed": ingest["events_per_min_processed"],
               "drain_s": ingest["drain_seconds"],
               "drained": ingest["drained"]}
    print_table("memory_quality: entities and ingest", [figures])
    if not contract:
        console.print("[yellow]memory_quality: the dialogue server's /search or /memory lacks "
                      "the evidence fields (kind, text, provenance); ours and whole-memory "
                      "figures are not measured[/yellow]")
    diff = None if overall["ours"] is None or overall["baseline"] is None \
        else round(overall["ours"] - overall["baseline"], 4)
    share = None if overall["whole_memory"] is None or not overall["all_raw_turns"] \
        else round(overall["whole_memory"] / overall["all_raw_turns"], 4)
    targets = [Target("answer in context: ours minus baseline", diff, ">=", 0.0),
               Target("answer in context: whole memory / all raw turns", share, ">=", 0.95),
               Target("created-entity precision", ents["precision"], ">=", 0.9),
               Target("created-entity duplicate rate", ents["duplicate_rate"], "<=", 0.02)]
    ratio = None if overall["ours"] is None or not overall["baseline"] \
        else round(overall["ours"] / overall["baseline"], 3)
    return Result(
        "memory_quality", rows,
        baseline={"answer_in_context": overall["baseline"],
                  "evidence_recall": overall["baseline_evidence_recall"],
                  "what": "cosine top raw utterances, same embedder, same budget"},
        ratio=ratio, targets=targets,
        params={"search_contract": contract, "figures": figures, "ingest": ingest,
                "entities": ents, "per_category": rows, "per_question": per_q,
                "sessions": [{"sample_id": x["conv"].sample_id, "session_id": x["sid"],
                              "world": x["world"]["key"]} for x in sessions]},
        notes="rates are shares of questions whose gold answer's content tokens all occur in "
              "the context; ratio = ours / baseline answer-in-context; None = not measured "
              "(no /search evidence contract, or nothing created).")
