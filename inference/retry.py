"""The one retry policy for model and embedding calls (tenacity).

Transient failures are retried: timeouts, connection errors, HTTP 408/409/429 and 5xx, from
the ``openai`` SDK (httpx) and the ``mistralai`` SDK (httpx2). The wait honours the server's
``Retry-After`` header (capped at 60 s), else exponential backoff with jitter (max 20 s).
Other errors (400, 401, 404, 422 ...) are raised at once.
"""

from __future__ import annotations

import httpx
import openai
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

try:  # mistralai 3.x speaks httpx2, whose errors are not httpx's
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - mistralai not installed
    _TRANSPORT_ERRORS = (httpx.TransportError,)


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (see module docstring)."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, *_TRANSPORT_ERRORS)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    status = getattr(exc, "status_code", None)  # mistralai SDKError / MistralError
    return isinstance(status, int) and (status in (408, 429) or status >= 500)


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds asked by a ``Retry-After`` header on the error's HTTP response, if any."""
    if exc is None:
        return None
    headers = getattr(exc, "headers", None)
    for attr in ("response", "raw_response"):
        response = getattr(exc, attr, None)
        if headers is None and response is not None:
            headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class wait_retry_after(wait_base):
    """Wait what ``Retry-After`` asks (capped), else the fallback wait."""

    def __init__(self, fallback: wait_base, cap_s: float = 60.0):
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_s(exc)
        return min(asked, self.cap_s) if asked is not None else self.fallback(retry_state)


def transient_retry(max_attempts: int):
    """A tenacity decorator: up to ``max_attempts`` calls while failures are transient; the
    last error is re-raised."""
    return retry(
        retry=retry_if_exception(is_transient),
        wait=wait_retry_after(wait_exponential_jitter(max=20.0, jitter=1.0)),
        stop=stop_after_attempt(max(1, max_attempts)),
        reraise=True,
    )
