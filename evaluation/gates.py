"""Quality and performance gates of the evaluation harness and the result of one scenario run.

A gate compares one metric with a threshold from the settings (``EVAL_*``): ``min`` gates pass
when the value is at least the threshold, ``max`` gates when it is at most the threshold. A
metric the run did not measure (None) gives the status ``no data``, which does not pass.

Metrics (names are the keys of :attr:`EvaluationResult.metrics`):

- ``lore_accuracy``: share of judged replies that do not contradict the NPC's lore entry.
- ``consistency``: share of judged repeated-question pairs whose two answers agree.
- ``sentiment_fit``: share of judged replies whose tone is one the archetype allows.
- ``p95_latency_ms``: 95th percentile of the client-side request latency, ms.
- ``error_rate``: failed requests / all requests.
- ``throughput_rps``: successful requests per second of the burst's wall time.
- ``peak_memory_mb``: peak resident memory of the dialogue server process, MB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from settings import Settings, get_settings

Kind = Literal["quality", "performance"]


@dataclass(frozen=True)
class Gate:
    """One threshold: ``metric`` must be >= (``op="min"``) or <= (``op="max"``) ``threshold``."""

    name: str
    kind: Kind
    metric: str
    op: Literal["min", "max"]
    threshold: float
    unit: str = ""

    def check(self, value: float | None) -> GateResult:
        """The gate applied to ``value`` (None: not measured -> ``no data``)."""
        if value is None:
            status = "no data"
        else:
            ok = value >= self.threshold if self.op == "min" else value <= self.threshold
            status = "pass" if ok else "fail"
        return GateResult(name=self.name, kind=self.kind, metric=self.metric, op=self.op,
                          threshold=self.threshold, unit=self.unit, value=value, status=status)


@dataclass(frozen=True)
class GateResult:
    """A gate and what it saw: ``status`` is ``pass``, ``fail`` or ``no data``."""

    name: str
    kind: Kind
    metric: str
    op: str
    threshold: float
    unit: str
    value: float | None
    status: str

    @property
    def passed(self) -> bool:
        """True only for ``pass``."""
        return self.status == "pass"


def gates_from_settings(s: Settings | None = None) -> dict[str, Gate]:
    """Every gate, keyed by metric, with thresholds from ``EVAL_*`` settings."""
    s = s or get_settings()
    gates = [
        Gate("lore accuracy", "quality", "lore_accuracy", "min", s.eval_min_lore_accuracy),
        Gate("consistency", "quality", "consistency", "min", s.eval_min_consistency),
        Gate("sentiment", "quality", "sentiment_fit", "min", s.eval_min_sentiment_fit),
        Gate("p95 latency", "performance", "p95_latency_ms", "max", s.eval_max_p95_latency_ms,
             "ms"),
        Gate("error rate", "performance", "error_rate", "max", s.eval_max_error_rate),
        Gate("throughput", "performance", "throughput_rps", "min", s.eval_min_throughput_rps,
             "req/s"),
        Gate("memory", "performance", "peak_memory_mb", "max", s.eval_max_memory_mb, "MB"),
    ]
    return {g.metric: g for g in gates}


def apply_gates(metrics: dict[str, float | None], names: list[str],
                gates: dict[str, Gate] | None = None) -> list[GateResult]:
    """Apply the gates of the metrics ``names`` to ``metrics`` (a missing key is None).

    Raises:
        KeyError: a name that is not a gate's metric.
    """
    gates = gates or gates_from_settings()
    return [gates[n].check(metrics.get(n)) for n in names]


@dataclass
class EvaluationResult:
    """One scenario run: its parameters, metrics, gate results and per-request records.

    ``passed`` is true when every gate passed (a gate with no data does not pass).
    """

    scenario: str
    server: str
    started_at: str
    duration_s: float
    params: dict
    metrics: dict[str, float | None]
    gates: list[GateResult]
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every gate passed."""
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``results.json`` entries)."""
        d = asdict(self)
        d["passed"] = self.passed
        return d
