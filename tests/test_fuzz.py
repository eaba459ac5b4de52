"""Schema-driven fuzzing of the dialogue server: schemathesis generates requests from the
server's own OpenAPI document (``app.openapi()``, what ``/openapi.json`` serves) and sends
them with this run's API key.

Every operation gets ``FUZZ_EXAMPLES`` generated requests (default 3, valid and invalid data
alike), the document's explicit examples and the coverage phase's boundary values of every
constraint (missing and extra fields, strings at and beyond their length limits, numbers at
their bounds, other methods; not for the turn, whose requests wait for the model, unless
``FUZZ_MODEL_COVERAGE=1``), sent in-process to the ASGI app (schemathesis runs its lifespan)
on the real database, Redis and llama.cpp model server. About half of the
requests have their ids replaced by ones that exist (an open session on the LIGHT world, its
world key, one of its characters), so that they get past the 404s into the routes' work:
turns call the model, events are recorded, ticks and retries enqueue tasks (no worker runs
here; the queues are emptied afterwards).

A request fails the test when the answer is a 5xx, or a status code, content type, header or
body (each event of a streamed turn included) that the document does not declare for that
operation. The stateful phase is off; about 850 requests in all, a minute on two cores. A
longer run is ``FUZZ_EXAMPLES=200 FUZZ_MODEL_COVERAGE=1 python -m pytest -q
tests/test_fuzz.py`` (README, "Fuzzing the HTTP API"); ``FUZZ_SEED`` picks another sequence
of requests.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections import Counter

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi

from contract.names import Queues
from tests.procs import api_headers
from workers.web import app

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3"))
"""Generated requests per operation (hypothesis ``max_examples`` of the fuzzing phase)."""

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
"""The schemathesis checks every answer must pass: no 5xx, and nothing the document does
not declare."""


def request_timeout_s() -> float:
    """How long a request may take: longer than the server's own bound on a model call (every
    attempt timing out), so that a slow model server shows as the server's declared 503, not
    as a client timeout."""
    from settings import get_settings

    s = get_settings()
    return s.llm_timeout_s * (s.llm_max_retries + 1) + 60


MODEL_OPERATION = "POST /v1/sessions/{session_id}/turns"
"""The operation that calls the model on every request that reaches it."""


def fuzz_config(examples: int, seed: int, model_coverage: bool = False) -> SchemathesisConfig:
    """``examples`` requests per operation in the examples and fuzzing phases (valid and
    invalid data, no shrinking, no example database, ``seed`` so that a failure can be
    replayed); the coverage phase (boundary values of every constraint, a few dozen requests
    per operation) for every operation but :data:`MODEL_OPERATION`, which gets it only with
    ``model_coverage`` (its requests wait for the model); the stateful phase off; only
    :data:`CHECKS`."""
    return SchemathesisConfig.from_dict({
        "seed": seed,
        "request-timeout": request_timeout_s(),
        "generation": {"mode": "all", "max-examples": examples, "no-shrink": True,
                       "database": "none"},
        "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
        "operations": [{"include-name": MODEL_OPERATION,
                        "phases": {"coverage": {"enabled": model_coverage}}}],
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


SENT: Counter = Counter()
"""Requests sent in this run by (operation, status code); printed at the end (``-s``)."""

schema = schemathesis.openapi.from_dict(app.openapi(), config=fuzz_config(
    FUZZ_EXAMPLES, int(os.environ.get("FUZZ_SEED", "18")),
    model_coverage=os.environ.get("FUZZ_MODEL_COVERAGE", "0") == "1"))
schema.app = app  # requests go to the app in-process


@pytest.fixture(scope="module")
def known(llm_server, light_world) -> dict[str, str]:
    """Ids that exist, by parameter name: a session opened on the LIGHT world (database and
    nearline tier), the world's key and one of its characters. Afterwards the app's lifespan
    (started by schemathesis) is ended and the queues the requests filled are emptied."""
    from memory import nearline
    from memory.db import session_scope
    from memory.worlds import base_entries
    from models import GameSession

    sid = uuid.uuid4().hex
    r = nearline.get_redis()
    with session_scope() as s:
        s.add(GameSession(id=sid, world_id=light_world["id"]))
        entries = base_entries(s, light_world["id"])
        nearline.cache_entries(r, light_world["id"], entries)
        npc = next(e.key for e in entries if e.entity_type == "character")
        other = next(e.key for e in entries if e.entity_type != "character")
    nearline.open_session(r, sid, light_world["id"], "fuzzer")
    yield {"session_id": sid, "world": light_world["key"], "world_key": light_world["key"],
           "npc_id": npc, "lore_entry_key": other}
    asgi.shutdown_lifespans()
    r.delete(*[q.value for q in Queues])
    statuses = Counter()
    for (_op, status), n in SENT.items():
        statuses[status] += n
    print(f"\nfuzz: {sum(SENT.values())} requests to {len({op for op, _ in SENT})} operations "
          f"(FUZZ_EXAMPLES={FUZZ_EXAMPLES}); by status: {dict(sorted(statuses.items()))}")


def with_known_ids(case, known: dict[str, str]) -> None:
    """Replace, for about half of the cases (chosen by a hash of the generated path and body,
    so a run is repeatable), every path parameter and body field named in ``known`` by the
    existing id."""
    if zlib.crc32(repr((case.path_parameters, case.body)).encode()) % 2:
        return
    for name in list(case.path_parameters or {}):
        if name in known:
            case.path_parameters[name] = known[name]
    if isinstance(case.body, dict):
        for name in ("npc_id", "world"):
            if name in case.body:
                case.body[name] = known[name]


@schema.parametrize()
def test_every_answer_is_declared_and_never_5xx(case, known):
    """One generated request per call (hypothesis runs it FUZZ_EXAMPLES times and more per
    operation); its answer must pass :data:`CHECKS`."""
    with_known_ids(case, known)
    res = case.call(headers=api_headers())
    SENT[case.operation.label, res.status_code] += 1
    case.validate_response(res, headers=api_headers())
