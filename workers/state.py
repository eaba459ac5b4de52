"""Per-process state of the dialogue server, shared by its routers."""

from __future__ import annotations

from celery import Celery

from contract.send import celery_sender

from memory.hot_cache import HotCache
from memory.vector_index import VectorIndex, VectorSync
from workers.relay import TurnRelay


class State:
    """The in-process vector index, its sync thread, the Level 1 hot cache, the Celery
    app used to send tasks and the outbox relay that sends turns' tasks off the request path
    (set by the server's lifespan)."""

    index: VectorIndex
    sync: VectorSync
    celery: Celery
    hot: HotCache
    relay: TurnRelay

    def send(self, name: str, kwargs: dict, task_id: str | None = None, **options) -> str:
        """``contract.send.Send`` over this server's Celery app (never Celery's per-thread
        ``current_app``: in FastAPI's handler threads that is Celery's default app)."""
        return celery_sender(self.celery)(name, kwargs, task_id, **options)


state = State()
