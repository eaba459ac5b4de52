"""Inputs of the capacity planner from files: an archetype file (YAML or JSON) and a
directory of PEFT adapters whose sizes are read from disk.

Archetype file (``.yaml``/``.yml``/``.json``)::

    archetypes:
      - {name: vampire, adapters: 7, adapter_size_mb: 200, share: 0.3}
      - {name: zombie, adapters: 7, adapter_size_mb: 120}      # share: equal split of the rest
    gpu_memory_gb: 24            # optional: any CapacityInputs field, by name
    target_npcs: 10000

Adapter directory (PEFT's ``save_pretrained`` layout, one folder per archetype)::

    DIR/vampire/personality/adapter_config.json
    DIR/vampire/personality/adapter_model.safetensors   (or adapter_model.bin)
    DIR/vampire/dialogue_style/...
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from capacity.planner import Archetype, CapacityInputs
from memory.importers.spec import read_data_file

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_FIELDS = {f.name for f in fields(CapacityInputs)} - {"archetypes"}


def _archetype(i: int, raw: dict, path: Path) -> Archetype:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ValueError(f"{path}: archetypes[{i}] needs a 'name'")
    unknown = set(raw) - {"name", "adapters", "adapter_count", "adapter_size_mb", "share"}
    if unknown:
        raise ValueError(f"{path}: archetypes[{i}] has unknown keys {sorted(unknown)}")
    try:
        return Archetype(name=str(raw["name"]),
                         adapter_count=int(raw.get("adapters", raw.get("adapter_count", 7))),
                         adapter_size_mb=float(raw.get("adapter_size_mb", 200.0)),
                         share=None if raw.get("share") is None else float(raw["share"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: archetypes[{i}]: {exc}") from exc


def load_inputs_file(path: Path) -> tuple[list[Archetype], dict]:
    """Read an archetype file (format in the module docstring).

    Returns:
        ``(archetypes, other CapacityInputs fields given in the file)``.

    Raises:
        ValueError: unreadable file, unknown keys, missing names (message names the file).
        FileNotFoundError: no such file.
    """
    data = read_data_file(path)  # ValueError names the file; FileNotFoundError passes
    if not isinstance(data, dict) or not isinstance(data.get("archetypes"), list):
        raise ValueError(f"{path}: expected a mapping with an 'archetypes' list")
    unknown = set(data) - _FIELDS - {"archetypes"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
    archetypes = [_archetype(i, raw, path) for i, raw in enumerate(data["archetypes"])]
    return archetypes, {k: v for k, v in data.items() if k != "archetypes"}


def adapter_size_mb(adapter_dir: Path) -> float:
    """Size in MB (10^6 bytes) of one PEFT adapter's weights file.

    Raises:
        ValueError: the folder has no ``adapter_model.safetensors`` / ``.bin``.
    """
    for name in WEIGHT_FILES:
        f = Path(adapter_dir) / name
        if f.is_file():
            return f.stat().st_size / 1e6
    raise ValueError(f"{adapter_dir}: no adapter weights ({' or '.join(WEIGHT_FILES)})")


def read_adapter_dir(root: Path, shares: dict[str, float] | None = None) -> list[Archetype]:
    """Archetypes from a directory of PEFT adapters (layout in the module docstring): one
    archetype per sub-folder holding adapter folders (those with ``adapter_config.json``);
    the chain's size is the sum of its adapters' weight files.

    Raises:
        ValueError: no archetype folder with adapters under ``root``, or an adapter folder
            without weights.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    out = []
    for arch in sorted(p for p in root.iterdir() if p.is_dir()):
        adapters = sorted(p for p in arch.iterdir() if (p / "adapter_config.json").is_file())
        if not adapters:
            continue
        sizes = tuple(adapter_size_mb(a) for a in adapters)
        out.append(Archetype(name=arch.name, adapter_count=len(sizes),
                             adapter_size_mb=sum(sizes) / len(sizes),
                             share=(shares or {}).get(arch.name), adapter_sizes_mb=sizes))
    if not out:
        raise ValueError(f"{root}: no archetype folders with PEFT adapters "
                         "(<archetype>/<adapter>/adapter_config.json)")
    return out
