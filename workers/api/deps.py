"""What every ``/v1`` route of the dialogue server shares.

Every route but the probes needs ``Authorization: Bearer <one of API_KEYS>``
(``workers.auth``) and binds the route's session id to its log records
(:data:`V1_DEPENDENCIES`); any of them may find Redis or the broker down
(:data:`V1_RESPONSES`). Tasks are sent with ``workers.state.State.send``.
"""

from __future__ import annotations

from fastapi import Depends, Request

from workers import auth, logging_setup
from workers.api.errors import responses


async def log_context(request: Request) -> None:
    """Bind the route's session id to this request's log records (async: the context then
    reaches the endpoint's worker thread)."""
    logging_setup.clear()
    logging_setup.bind(session_id=request.path_params.get("session_id"))


V1_RESPONSES = responses(401, 503)
"""The error answers every ``/v1`` route may give besides 422."""
V1_DEPENDENCIES = [Depends(auth.require_api_key), Depends(log_context)]
"""The dependencies of every ``/v1`` route: the API key, then the log context."""
