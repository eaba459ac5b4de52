"""The pipeline's public contract: task names, queues, payload models, the one task table and
the one way to send a task.

- ``contract.names``: the ``Queues`` and ``TaskName`` enums (the names game backends send);
- ``contract.payloads``: every task's kwargs as a pydantic model;
- ``contract.registry``: ``TASKS`` (name -> queue and payload) and the worker groups, from
  which Celery's routes, the tasks' payload validation, the worker's start-up check and the
  published task contract (``npc_memory_client/task_contract.json``) are derived;
- ``contract.send``: the ``Send`` protocol, its Celery adapter ``celery_sender`` and the turn
  and simulation sends shared by the dialogue server and the tasks.

This package imports nothing from ``tasks``, ``workers``, ``celeryconfig`` or Celery, so the
domain (``memory``) can send tasks without loading the task modules.
"""
