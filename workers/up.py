"""``npc-memory up``: keep the embedded stack running in the foreground for a game to talk to.

It starts what ``workers.stack.EmbeddedStack`` starts, imports the chosen world, prints how to
connect (base URL, API key, OpenAPI docs, a curl example), then waits. Ctrl-C or SIGTERM
stops every process it started (nothing is left behind) and it exits with status 0; a process
that dies on its own stops the rest and exits with status 1, naming it.
"""

from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path

from rich.console import Console

from memory.importers.spec import WorldSpec
from workers.stack import EmbeddedStack, StackOptions

BUILT_IN_WORLDS = ("saltmere", "light")


def load_world(name: str, shared_dir: Path) -> WorldSpec:
    """The world to import: ``saltmere`` (the example world that ships with the project),
    ``light`` (LIGHT's possibly-vampires world from ``shared_dir/data/light``), or the path of
    a world file in the project's JSON format.

    Raises:
        FileNotFoundError: no such file or built-in world data.
        ValueError: the file is not a valid world.
    """
    if name == "saltmere":
        from memory.importers.examples import load_example

        return load_example()[0]
    if name == "light":
        from memory.importers.light import load_light_world

        return load_light_world(shared_dir / "data" / "light" / "possibly-vampires.json")
    from memory.importers.spec import load_world_json

    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no world file {path} (built-in worlds: {', '.join(BUILT_IN_WORLDS)})")
    return load_world_json(path)


class _Stop(Exception):
    """SIGTERM arrived."""


def connection_text(stack: EmbeddedStack, world: WorldSpec | None) -> str:
    """What ``up`` prints once the stack answers: URLs, key and a curl example."""
    key = stack.api_key
    auth = f"Authorization: Bearer {key}"
    lines = [f"dialogue server: {stack.base_url}",
             f"API key:         {key or '(authentication off)'}",
             f"OpenAPI docs:    {stack.base_url}/docs",
             f"logs:            {stack.opts.data_dir / 'logs'}"]
    if stack.flower_url:
        lines.append(f"Flower:          {stack.flower_url} (user npc, password = the API key)")
    for var, url in stack.model_servers.items():
        lines.append(f"model server:    {url} ({var})")
    if stack.dialogue_defaults:
        lines.append("dialogue:        " + " ".join(
            f"{k}={v}" for k, v in stack.dialogue_defaults.items())
            + " (the embedded stack's; set them to override)")
    if world is not None:
        npc = next((e.key for e in world.entries if e.entity_type == "character"), "npc")
        lines += ["", "try it:",
                  f"  curl -s -X POST {stack.base_url}/v1/sessions -H {shlex.quote(auth)} "
                  f"-H 'Content-Type: application/json' -d '{{\"world\": \"{world.key}\"}}'",
                  f"  curl -s -X POST {stack.base_url}/v1/sessions/<session_id>/turns "
                  f"-H {shlex.quote(auth)} -H 'Content-Type: application/json' "
                  f"-d '{{\"npc_id\": \"{npc}\", \"player_text\": \"Hello there.\"}}'",
                  f"  npc-memory chat --url {stack.base_url} --api-key {key} --world {world.key}"]
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


def run_up(opts: StackOptions, world: WorldSpec | None, console: Console | None = None,
           poll_s: float = 1.0) -> int:
    """Start the stack, print how to connect, wait for Ctrl-C/SIGTERM, stop everything.

    Returns:
        The exit status: 0 after a requested stop, 1 when a process died on its own.
    """
    console = console or Console()
    if world is not None:
        opts.worlds = [world]

    def on_term(_signum, _frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_term)
    stack = EmbeddedStack(opts)
    try:
        with console.status("starting the embedded stack") as status:
            stack._status = status.update
            stack.start()
        console.print(connection_text(stack, world), highlight=False, soft_wrap=True)
        while True:
            stack.supervisor.check()
            time.sleep(poll_s)
    except (KeyboardInterrupt, _Stop):
        console.print("stopping every process ...")
        return 0
    except RuntimeError as exc:  # a process died on its own
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the stop short
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        console.print("stopped")
