"""The Celery queue topology (``celeryconfig``, ``workers.celery_app.check_topology``): every
declared task is registered and routed to its queue, and undeclared tasks are refused."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.pure


def test_every_declared_task_is_registered_and_routed():
    import celeryconfig
    from contract.registry import TASKS
    from workers.celery_app import app, check_topology

    check_topology(app)
    ours = {n for n in app.tasks if n.startswith("npc_memory.")}
    assert ours == {n.value for n in TASKS}
    declared_queues = {q.name for q in celeryconfig.task_queues}
    for name, queue in ((n.value, s.queue) for n, s in TASKS.items()):
        assert name in app.tasks
        assert celeryconfig.task_routes[name]["queue"] == queue.value
        assert queue.value in declared_queues
        route = app.amqp.router.route({}, name, args=(), kwargs={})
        assert route["queue"].name == queue.value, name
        assert app.tasks[name].queue_name == queue.value


def test_queues_enum_matches_declared_queues():
    import celeryconfig
    from contract.names import Queues
    from contract.registry import TASKS

    assert {q.name for q in celeryconfig.task_queues} == {q.value for q in Queues}
    assert {s.queue for s in TASKS.values()} == set(Queues)


def test_undeclared_task_name_is_refused():
    from contract.payloads import Payload
    from tasks.base import enqueue, npc_task

    sent = []
    with pytest.raises(RuntimeError, match="npc_memory.nope"):
        npc_task("npc_memory.nope")
    with pytest.raises(RuntimeError):
        enqueue(lambda *a, **kw: sent.append(a), "npc_memory.nope", Payload())
    assert sent == []


def test_check_topology_detects_a_task_without_queue():
    from celery import Celery

    import celeryconfig
    from workers.celery_app import check_topology

    other = Celery("topology-test", set_as_current=False)
    other.config_from_object(celeryconfig)

    @other.task(name="npc_memory.rogue")
    def rogue():  # pragma: no cover - never run
        return None

    with pytest.raises(RuntimeError, match="rogue"):
        check_topology(other)


def test_check_topology_detects_a_table_entry_without_task(monkeypatch):
    import workers.celery_app as celery_app
    from contract.names import Queues
    from contract.payloads import Payload
    from contract.registry import TASKS, TaskSpec

    table = {**TASKS, "npc_memory.missing": TaskSpec("npc_memory.missing", Queues.EMBED, Payload)}
    monkeypatch.setattr(celery_app, "TASKS", table)
    with pytest.raises(RuntimeError, match="without task.*npc_memory.missing"):
        celery_app.check_topology(celery_app.app)
