"""A small typed client for game backends: the dialogue server over HTTP, and the public
Celery tasks by name.

It depends on httpx, pydantic, jsonschema and celery only; it never imports the worker code
(``tasks/``, ``workers/``, ``memory/``), so a game backend can vendor this folder alone.

    from npc_memory_client import NpcMemoryClient, TaskSender

    with NpcMemoryClient("http://dialogue:8000", api_key="...") as npc:
        session = npc.open_session("saltmere", player_name="Ann")
        reply = npc.turn(session.session_id, "innkeeper", "Any rooms free?")
        for event in npc.turn_stream(session.session_id, "innkeeper", "And supper?"):
            ...  # Token(text) as the model generates, then the TurnReply
        npc.post_event(session.session_id, "innkeeper", "The bard sings.", event_id="e-1")
        npc.tick(session.session_id)
        slot = npc.fork(session.session_id, reply.turn_id)   # a save slot at that turn
        npc.rollback(session.session_id, reply.turn_id)      # load it: later turns undone

    with TaskSender("redis://redis:6379/0") as tasks:
        tasks.enqueue("npc_memory.update_note", {"session_id": ..., "lore_entry_key": ...,
                                                 "update_summary": ..., "idempotency_key": ...})
"""

from npc_memory_client.contract import (Contract, InvalidPayload, UnknownTask, load_contract)
from npc_memory_client.http import (ApiError, DocumentHit, Event, EvidenceHit, Fork, Memory,
                                    NpcMemoryClient, Reanalysis, Rollback, Session,
                                    StreamEvent, Tick,
                                    Token, TurnReply, Unauthorized, WorldTick, sse_events)
from npc_memory_client.tasks import TaskSender

__all__ = ["ApiError", "Contract", "DocumentHit", "Event", "EvidenceHit", "Fork",
           "InvalidPayload", "Memory", "NpcMemoryClient", "Reanalysis", "Rollback", "Session",
           "StreamEvent", "TaskSender",
           "Tick", "Token", "TurnReply", "Unauthorized", "UnknownTask", "WorldTick",
           "load_contract", "sse_events"]
