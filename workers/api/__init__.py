"""The dialogue server's HTTP surface, by area (assembled by ``workers.web``).

- ``schemas``: request and response bodies, the streamed turn's event schema;
- ``errors``: the error bodies the OpenAPI document declares and the one mapping of domain
  errors to HTTP (exception handlers);
- ``deps``: what every ``/v1`` route shares (API key, log context, declared errors);
- ``probes``: ``/healthz``, ``/readyz``, ``/metrics``;
- ``sessions``: opening a session, a manual world tick;
- ``turns``: playing a turn (``stream``: its Server-Sent Events half);
- ``events``: recording a turn generated elsewhere;
- ``search``: what a session's memory holds.
"""
