"""Real processes for the fault and outage tests; the helpers live in ``workers.procs`` (shared
with the benchmarks in ``bench/``). Logs go to ``DATA_DIR`` (the test run's temporary folder).
"""

from workers.embedded import free_port
from workers.procs import (
    ROOT,
    HAProxy,
    Host,
    PrivatePostgres,
    PrivateRedis,
    SubprocessWorker,
    WebServer,
    _Subprocess,
    _wait_port,
    api_headers,
    haproxy_bin,
    process_env,
    process_env_with_broker,
)

__all__ = ["ROOT", "HAProxy", "Host", "PrivatePostgres", "PrivateRedis", "SubprocessWorker", "WebServer",
           "_Subprocess", "_wait_port", "api_headers", "free_port",
           "haproxy_bin", "process_env", "process_env_with_broker"]
