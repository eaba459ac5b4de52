"""Our own small example world (Saltmere, a harbour town) and a session script for it.

Both files are written for this project (no third-party text) and ship as package data in
``memory/importers/data/``: ``example_world.json`` (format of
:func:`memory.importers.spec.load_world_json`) and ``example_session.json`` (format of
:func:`memory.importers.spec.load_session_script`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from memory.importers.spec import SessionScript, WorldSpec, load_session_script, load_world_json

EXAMPLE_WORLD_FILE = "example_world.json"
EXAMPLE_SESSION_FILE = "example_session.json"


def example_paths() -> tuple[Path, Path]:
    """``(world_json, session_json)``: filesystem paths of the bundled example files.

    Looked up with :mod:`importlib.resources`, so they are found both in a checkout and in an
    installed package (which must be installed unzipped, as pip does). Raises
    ``FileNotFoundError`` if the package data is missing (e.g. a build without the
    ``data/*.json`` package-data glob).
    """
    data = resources.files("memory.importers").joinpath("data")
    paths = []
    for name in (EXAMPLE_WORLD_FILE, EXAMPLE_SESSION_FILE):
        resource = data.joinpath(name)
        path = Path(str(resource))
        if not resource.is_file() or not path.is_file():
            raise FileNotFoundError(
                f"example data {name!r} not found at {path} (package data not installed?)"
            )
        paths.append(path)
    return paths[0], paths[1]


def load_example() -> tuple[WorldSpec, SessionScript]:
    """The example world and its session script, the script checked against the world."""
    world_path, session_path = example_paths()
    world = load_world_json(world_path)
    return world, load_session_script(session_path, world=world)


__all__ = ["EXAMPLE_SESSION_FILE", "EXAMPLE_WORLD_FILE", "example_paths", "load_example"]
