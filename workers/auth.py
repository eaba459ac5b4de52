"""Bearer-token authentication of the dialogue server (``API_KEYS``, ``API_AUTH``).

Every route except ``/healthz``, ``/readyz`` and ``/metrics`` depends on :func:`require_api_key`
(``workers.web`` attaches it to the routers). Clients send ``Authorization: Bearer <key>``;
a missing or unknown key is answered ``401`` with a message and ``WWW-Authenticate: Bearer``.

Secure by default: with ``API_AUTH=on`` (the default) and no ``API_KEYS`` the server refuses
to start (:func:`check_configured`, called from the lifespan). ``API_AUTH=off`` serves without
authentication and must be set explicitly. Keys are compared in constant time and never
logged.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from settings import Settings, get_settings

log = logging.getLogger(__name__)

bearer = HTTPBearer(
    auto_error=False, scheme_name="ApiKey",
    description="One of the dialogue server's API_KEYS: `Authorization: Bearer <key>`")


class AuthNotConfigured(RuntimeError):
    """API_AUTH is on and API_KEYS is empty: the server must not start."""


def check_configured(settings: Settings | None = None) -> None:
    """Refuse to serve without keys unless authentication was switched off explicitly.

    Raises:
        AuthNotConfigured: ``API_AUTH=on`` and ``API_KEYS`` has no key.
    """
    s = settings or get_settings()
    if s.api_auth == "off":
        log.warning("API_AUTH=off: the dialogue server accepts requests without an API key")
        return
    if not s.api_key_list:
        raise AuthNotConfigured(
            "API_KEYS is empty: set API_KEYS=key1,key2 (clients send 'Authorization: Bearer "
            "<key>') or API_AUTH=off to serve without authentication")


def key_is_valid(candidate: str, keys: list[str]) -> bool:
    """Whether ``candidate`` is one of ``keys`` (constant-time comparison of each)."""
    given = candidate.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


def _unauthorized(message: str, error: str) -> HTTPException:
    return HTTPException(401, message,
                         headers={"WWW-Authenticate": f'Bearer realm="npc-memory", error="{error}"'})


def require_api_key(
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
) -> None:
    """FastAPI dependency: pass when the request carries a valid bearer key (or auth is off).

    Raises:
        HTTPException: 401 with ``WWW-Authenticate: Bearer`` when the key is missing, not a
            bearer token, or not one of ``API_KEYS``.
    """
    s = get_settings()
    if s.api_auth == "off":
        return
    if credentials is None:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                            "invalid_request")
    if not key_is_valid(credentials.credentials, s.api_key_list):
        raise _unauthorized("invalid API key", "invalid_token")
