"""Real processes for the fault and outage tests; the helpers live in ``workers.procs`` (shared
with the benchmarks in ``bench/``). Logs go to ``DATA_DIR`` (the test run's temporary folder).
"""

from workers.embedded import free_port
from workers.procs import (
    ROOT,
    PrivatePostgres,
    PrivateRedis,
    SubprocessWorker,
    WebServer,
    _Subprocess,
    _wait_port,
    api_headers,
    process_env,
)

__all__ = ["ROOT", "PrivatePostgres", "PrivateRedis", "SubprocessWorker", "WebServer",
           "_Subprocess", "_wait_port", "api_headers", "free_port", "process_env"]
