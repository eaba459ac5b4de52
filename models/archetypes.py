"""The archetype model chains: one shared base model, one LoRA adapter per
(archetype, task), all of an archetype's adapters on one model server (the user's golden rule:
an archetype's chain stays on one server).

``Archetype`` holds the chain's server (``server_url`` of its OpenAI-compatible vLLM server and
a free-form ``server_id`` such as ``g5-2xlarge-001``), the base model the adapters were
trained on, and the URLs of the co-located voice / facial / body services (stored for
clients, never called here). ``Adapter`` is one adapter's metadata: the PEFT adapter's
path on the model server's disk, LoRA rank, size in MB, base model, version, what it was
trained on and its quality metrics; ``name`` is the ``lora_name`` it is served under (the
``model`` of a chat call), ``mistral_model`` the fine-tuned model id that stands for it on
the Mistral backend. ``broken`` marks an adapter the server could not find (vLLM 404).

The runtime copy lives in Redis (``inference.lora.registry``); these tables are the source
of truth it is rebuilt from.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, utcnow

ADAPTER_TASKS = ("personality", "dialogue_style", "action_policy", "emotional_response",
                 "world_knowledge", "social_dynamics", "goal_prioritization")
"""The adapter tasks: the seven adapters of a complete chain."""


class Archetype(Base):
    """One archetype's chain (``name`` lower-case, e.g. ``vampire``)."""

    __tablename__ = "archetypes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    server_url: Mapped[str] = mapped_column(String(500))
    server_id: Mapped[str] = mapped_column(String(200), default="")
    base_model: Mapped[str] = mapped_column(String(500))
    voice_service_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    facial_service_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    body_service_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
    adapters: Mapped[list["Adapter"]] = relationship(back_populates="archetype",
                                                     cascade="all, delete-orphan")


class Adapter(Base):
    """One LoRA adapter of an archetype's chain (unique per archetype and task)."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("archetype_id", "task", name="uq_adapters_archetype_task"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    archetype_id: Mapped[int] = mapped_column(ForeignKey("archetypes.id", ondelete="CASCADE"),
                                              index=True)
    task: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(String(1000))
    rank: Mapped[int] = mapped_column(Integer, default=0)
    size_mb: Mapped[float] = mapped_column(Float, default=0.0)
    base_model: Mapped[str] = mapped_column(String(500))
    version: Mapped[str] = mapped_column(String(100), default="1")
    trained_on: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    mistral_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    broken: Mapped[bool] = mapped_column(Boolean, default=False)
    broken_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    archetype: Mapped[Archetype] = relationship(back_populates="adapters")
