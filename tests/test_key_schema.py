"""The Redis key schema lives in ``memory.keys`` alone: no production module spells a key.

The scan parses every production ``.py`` file (outside ``tests/``, ``alembic/`` and hidden
folders such as ``.venv``) and looks at string literals and the leading literal part of
f-strings; comments, docstrings and log messages (a prefix followed by a space, such as
``"lora: loaded %s"``) do not count.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from memory import keys

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path("memory/keys.py")
SKIPPED_DIRS = {"tests", "alembic", "__pycache__"}

PREFIXES = ("session", "sessions", "world", "note_pending", "outbox", "dead_letters", "vectors",
            "deliveries", "llm", "lora", "npc_memory")
KEY_START = re.compile(rf"^(?:{'|'.join(PREFIXES)}):(?!\s)")
"""A literal that starts a Redis key: a known prefix, a colon, and no space after it."""

NOT_KEYS = {
    ("memory/vector_index.py", "world_scope"),
    ("memory/vector_index.py", "session_scope"),
}
"""(file, function) pairs whose ``world:``/``session:`` strings are vector scope names (the
``scope`` column of stored vectors and of the vector update stream), not Redis keys."""


def _production_files() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in rel.parts[:-1]):
            continue
        out.append(rel)
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (or bare string statements)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}


def _key_literals(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """``(line, literal, enclosing function)`` of the string literals and f-string starts that
    begin like a Redis key."""
    skip = _docstrings(tree)
    found: list[tuple[int, str, str | None]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            if (isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and KEY_START.match(first.value)):
                found.append((node.lineno, first.value, func))
            for value in node.values:  # only the start of an f-string counts
                if isinstance(value, ast.FormattedValue):
                    visit(value, func)
            return
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in skip and KEY_START.match(node.value)):
            found.append((node.lineno, node.value, func))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return found


def test_scan_finds_keys_and_ignores_prose():
    tree = ast.parse('''
"""session:{sid}:turns in a docstring"""
import logging
# f"session:{sid}" in a comment
A = f"session:{sid}:turns"
B = "sessions:active"
C = f"{x}session:"
logging.info("lora: loaded %s", "x")
def f():
    return f"lora:lock:{url}"
''')
    assert [(line, literal) for line, literal, _ in _key_literals(tree)] == [
        (5, "session:"), (6, "sessions:active"), (10, "lora:lock:")]


def test_no_redis_key_outside_the_schema():
    offenders = []
    for rel in _production_files():
        if rel == SCHEMA:
            continue
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"), filename=str(rel))
        for line, literal, func in _key_literals(tree):
            if (rel.as_posix(), func) not in NOT_KEYS:
                offenders.append(f"{rel.as_posix()}:{line}: {literal!r}")
    assert not offenders, ("Redis keys built outside memory/keys.py (use its functions):\n"
                           + "\n".join(offenders))


def test_schema_documents_every_key():
    public = {name: obj for name, obj in vars(keys).items()
              if not name.startswith("_") and name != "annotations"}
    functions = [n for n, obj in public.items() if inspect.isfunction(obj)]
    assert functions, "memory.keys defines no key functions"
    assert not [n for n in functions if not (public[n].__doc__ or "").strip()]
    source = inspect.getsource(keys)
    constants = [n for n, obj in public.items() if isinstance(obj, str) and n.isupper()]
    for name in constants:  # a constant's docstring is the string literal right after it
        assert re.search(rf'^{name} = "[^"]+"\n"""', source, re.M), f"{name} has no docstring"


def test_layout():
    """The stored layout other processes (and older deployments) read: these strings must
    not change without a migration."""
    assert keys.world_entry(1, 7) == "world:1:entry:7"
    assert keys.world_keys(1) == "world:1:keys"
    assert keys.world_archetypes(1) == "world:1:archetypes"
    assert keys.occupants(1, 9) == "world:1:occupants:9"
    assert keys.session("s") == "session:s"
    assert keys.turns("s") == "session:s:turns"
    assert keys.seq("s") == "session:s:seq"
    assert keys.note("s", 7) == "session:s:note:7"
    assert keys.note_turns("s", 7) == "session:s:note_turns:7"
    assert keys.memory_versions("s") == "session:s:mver"
    assert keys.card("s", 7, "quest") == "session:s:card:7:quest"
    assert keys.card_applied_order("s", 7) == "session:s:card:7:applied_order"
    assert keys.witnessed("s", 7) == "session:s:witnessed:7"
    assert keys.simulation_pending("s") == "session:s:simulation_pending"
    assert keys.note_pending("s", "baker") == "note_pending:s:baker"
    assert keys.deliveries("t") == "deliveries:t"
    assert keys.dialogue_inflight("http://m/v1/") == "llm:dialogue_inflight:http://m/v1"
    assert (keys.SESSIONS_ACTIVE, keys.OUTBOX_TURNS, keys.OUTBOX_PAYLOADS,
            keys.DEAD_LETTERS_PARKED, keys.VECTOR_UPDATES) == (
        "sessions:active", "outbox:turns", "outbox:turn_payloads", "dead_letters:parked",
        "vectors:updates")
