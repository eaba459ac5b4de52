"""Archetype LoRA adapters: one shared base model, one PEFT adapter per
(archetype, task), an archetype's chain on one vLLM server.

- ``registry``: archetypes and adapters in the database (``models.archetypes``), published
  to Redis for the hot path; provisioning from a directory of PEFT adapters.
- ``coordinator``: makes sure an adapter is loaded on its archetype's vLLM server before use
  (runtime LoRA API), at most ``LORA_MAX_LOADED_ADAPTERS`` per server (LRU unloading), one
  load per adapter across processes, usage statistics, broken adapters.
- ``routing``: NPC -> archetype -> the adapter of the call's purpose -> ``ModelRoute``.
"""
