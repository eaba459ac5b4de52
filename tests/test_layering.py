"""Imports run one way: workers -> tasks -> (memory, inference, prompts, contract) -> models.

For each layer a fresh interpreter (``python -c``) imports every module of the layer while
recording every executed import statement (importer -> imported module); the test then looks
at ``sys.modules`` and at those edges. A forbidden module is reported with the module that
imported it and the chain of imports that led there from the layer. Known violations, owned by
a refactoring still under way, are listed in :data:`KNOWN_VIOLATIONS`; any other one fails.
No database, broker or model server is needed: only imports run.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from devtools.procs import process_env

ROOT = Path(__file__).resolve().parents[1]

DOMAIN_FORBIDDEN = ("tasks", "workers", "celeryconfig", "npc_memory_client", "bench", "evaluation")

LAYERS: dict[str, tuple[str, ...]] = {
    "models": ("memory", "inference", "prompts", "contract", "tasks", "workers", "celeryconfig"),
    "memory": DOMAIN_FORBIDDEN,
    "inference": DOMAIN_FORBIDDEN,
    "prompts": DOMAIN_FORBIDDEN,
    "contract": DOMAIN_FORBIDDEN,
    "tasks": ("workers",),
}
"""Layer (top-level package) -> the top-level packages/modules none of its modules may load."""

KNOWN_VIOLATIONS: set[tuple[str, str]] = {
    # (importing module, forbidden top-level package it imports), for imports that another
    # refactoring is still moving out; remove an entry once its import is gone
    # (test_known_violations_are_still_real fails until it is). Empty: every layer is clean.
}

DRIVER = r"""
import builtins, importlib, importlib.util, json, sys, traceback

edges = set()
_real_import = builtins.__import__


def _absolute(name, globals_, level):
    if level == 0:
        return name
    package = (globals_ or {}).get("__package__")
    if package is None:
        package = (globals_ or {}).get("__name__", "").rpartition(".")[0]
    return importlib.util.resolve_name("." * level + name, package)


def _spy(name, globals=None, locals=None, fromlist=(), level=0):
    module = _real_import(name, globals, locals, fromlist, level)
    importer = (globals or {}).get("__name__") or "?"
    try:
        target = _absolute(name, globals, level)
    except Exception:
        return module
    parts = target.split(".") if target else []
    for i in range(1, len(parts) + 1):
        edges.add((importer, ".".join(parts[:i])))
    for item in fromlist or ():
        sub = f"{target}.{item}" if target else item
        if sub in sys.modules:
            edges.add((importer, sub))
    return module


builtins.__import__ = _spy
errors = {}
for name in json.loads(sys.argv[1]):
    try:
        edges.add(("__main__", name))
        importlib.import_module(name)
    except BaseException:
        errors[name] = traceback.format_exc(limit=3)
print(json.dumps({"edges": sorted(edges), "modules": sorted(sys.modules), "errors": errors}))
"""


def _modules(package: str) -> tuple[str, ...]:
    """Every module of a top-level package (its ``__init__`` and each ``.py`` below it)."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _import_all(modules: tuple[str, ...]) -> dict:
    """Import ``modules`` in a fresh interpreter: ``{"edges": [[importer, imported]],
    "modules": sys.modules' names, "errors": {module: traceback}}``."""
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(list(modules))], cwd=ROOT,
                          env=process_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _graph(edges: list) -> dict[str, set[str]]:
    """importer -> imported modules (importlib's own frames, which load a ``from`` list's
    submodules, are left out: the spy also records those under the real importer)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if not a.startswith("importlib"):
            graph.setdefault(a, set()).add(b)
    return graph


def _in(name: str, tops: tuple[str, ...]) -> bool:
    return any(name == t or name.startswith(t + ".") for t in tops)


def _chain(graph: dict[str, set[str]], start: set[str], goal: str) -> list[str]:
    """Shortest import chain from a module of ``start`` to ``goal`` (empty if none)."""
    seen = {s: [s] for s in start}
    todo = deque(start)
    while todo:
        node = todo.popleft()
        if node == goal:
            return seen[node]
        for nxt in sorted(graph.get(node, ())):
            if nxt not in seen:
                seen[nxt] = seen[node] + [nxt]
                todo.append(nxt)
    return []


@functools.lru_cache(maxsize=None)
def _violations(layer: str, forbidden: tuple[str, ...]) -> tuple[dict, list[str]]:
    """``({(importer, forbidden top): chain}, loaded forbidden modules no edge explains)``
    for one layer."""
    modules = _modules(layer)
    res = _import_all(modules)
    assert not res["errors"], f"modules of {layer} do not import: {res['errors']}"
    graph = _graph(res["edges"])
    found = {}
    for a, b in res["edges"]:
        if _in(b, forbidden) and not _in(a, forbidden) and a != "__main__" and \
                not a.startswith("importlib"):
            top = next(t for t in forbidden if b == t or b.startswith(t + "."))
            found.setdefault((a, top), _chain(graph, set(modules), b))
    targets = {b for _, b in res["edges"]}
    unexplained = [m for m in res["modules"] if _in(m, forbidden) and m not in targets]
    return found, unexplained


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_run_one_way(layer):
    found, unexplained = _violations(layer, LAYERS[layer])
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    report = "\n".join(f"{a} imports {top}: {' -> '.join(chain) or '(chain unknown)'}"
                       for (a, top), chain in sorted(new.items()))
    assert not new, f"{layer} pulls in what it must not:\n{report}"
    assert not unexplained, f"{layer} loaded {unexplained} by a path the hook did not see"


def test_known_violations_are_still_real():
    """An entry of ``KNOWN_VIOLATIONS`` whose import is gone is removed from the list."""
    stale = set(KNOWN_VIOLATIONS)
    for layer, forbidden in LAYERS.items():
        if any(a == layer or a.startswith(layer + ".") for a, _ in stale):
            found, _ = _violations(layer, forbidden)
            stale -= set(found)
    assert not stale, f"no longer violations, remove them from KNOWN_VIOLATIONS: {stale}"


@pytest.mark.parametrize("modules", [("memory.hot_cache",), _modules("contract")],
                         ids=["hot_cache", "contract"])
def test_no_celery_is_loaded(modules):
    """The dialogue hot path (``memory.hot_cache``) and the public contract need no Celery:
    importing them loads neither celery nor kombu."""
    res = _import_all(modules)
    assert not res["errors"], res["errors"]
    graph = _graph(res["edges"])
    for top in ("celery", "kombu"):
        loaded = [m for m in res["modules"] if m == top or m.startswith(top + ".")]
        assert not loaded, " -> ".join(_chain(graph, set(modules), top))


def test_memory_does_not_import_prompts():
    """``prompts.outputs`` types its answers with ``memory.cards``' event kinds; the domain
    does not import the prompt package back (no package cycle; ``memory.entities`` names the
    creation model's answer for type checking only)."""
    res = _import_all(_modules("memory"))
    back = sorted((a, b) for a, b in res["edges"]
                  if _in(a, ("memory",)) and _in(b, ("prompts",)))
    assert not back, back
