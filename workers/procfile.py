"""The Procfile as data, and the supervisord configuration made from it.

honcho (``honcho start``) is for development: when one process exits it stops all the others.
In production each Procfile process must be restarted on its own when it dies; either run one
process per container (or dyno) with a restart policy (``restart: unless-stopped``, a
Kubernetes Deployment, systemd ``Restart=always``) or run them all under supervisord with
``deploy/supervisord.conf``, which this module writes from the Procfile so both stay the same:

    python -m workers.procfile > deploy/supervisord.conf
    supervisord -c deploy/supervisord.conf

``tests/test_procfile.py`` checks that the committed file is what this module writes.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROCFILE = ROOT / "Procfile"
SUPERVISORD_CONF = ROOT / "deploy" / "supervisord.conf"

HEADER = """\
; Generated from the Procfile by `python -m workers.procfile > deploy/supervisord.conf`;
; edit the Procfile and generate again. `supervisord -c deploy/supervisord.conf` runs every
; Procfile process from the repository root with the environment it was started with, and
; restarts any process that exits without stopping the others. Logs go to supervisord's
; stdout. Scale a kind with `numprocs` (its Celery node names stay unique: `worker.0@host`,
; `worker.1@host`, ...).

[supervisord]
nodaemon=true
logfile=/dev/null
logfile_maxbytes=0
pidfile=/tmp/npc-memory-supervisord.pid

[unix_http_server]
file=/tmp/npc-memory-supervisord.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///tmp/npc-memory-supervisord.sock
"""

PROGRAM = """
[program:{name}]
command=/bin/sh -c {command}
directory=%(here)s/..
process_name=%(program_name)s.%(process_num)d
numprocs=1
environment=HONCHO_PROCESS_NAME="%(program_name)s.%(process_num)d"
autostart=true
autorestart=true
startsecs=5
startretries=1000000
stopsignal=TERM
stopwaitsecs=60
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
"""


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """``{process name: shell command}`` of a Procfile, in file order (comments and blank
    lines skipped).

    Raises:
        ValueError: a line that is not ``name: command`` or a name seen twice.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        name, command = name.strip(), command.strip()
        if not sep or not name.isidentifier() or not command:
            raise ValueError(f"{path}:{number}: not 'name: command': {line!r}")
        if name in out:
            raise ValueError(f"{path}:{number}: process {name!r} declared twice")
        out[name] = command
    return out


def supervisord_conf(processes: dict[str, str]) -> str:
    """The supervisord configuration running ``processes`` (``{name: shell command}``): one
    ``[program:name]`` each, run by ``/bin/sh -c 'exec COMMAND'`` (the Procfile's
    ``${VAR:-default}`` expansions work as under honcho), restarted whenever it exits."""
    programs = "".join(
        PROGRAM.format(name=name, command=shlex.quote(f"exec {cmd}").replace("%", "%%"))
        for name, cmd in processes.items())
    return HEADER + programs


def main() -> int:
    """Print the supervisord configuration of the repository's Procfile."""
    sys.stdout.write(supervisord_conf(read_procfile()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
