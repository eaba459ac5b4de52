"""Archetype adapters: ``provision-archetypes``, ``archetypes``, ``set-archetype``."""

from __future__ import annotations

from pathlib import Path

import typer

from workers.cli.common import echo

app = typer.Typer()


def _registry(fn, *args, **kwargs):
    """Run an ``inference.lora.registry`` function in a transaction; a ProvisionError,
    UnknownCharacter or ValueError is printed on stderr and exits with status 1."""
    from inference.lora import registry
    from memory import nearline
    from memory.db import session_scope

    try:
        with session_scope() as s:
            return fn(s, nearline.get_redis(), *args, **kwargs)
    except (registry.ProvisionError, registry.UnknownCharacter, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("provision-archetypes")
def provision_archetypes(
    root: Path = typer.Argument(..., help="folder of <archetype>/<task>/adapter_config.json"),
    archetype: str | None = typer.Option(None, help="only this archetype folder"),
    server_url: str | None = typer.Option(None, help="the chain's vLLM server (.../v1); "
                                          "default GENERATION_BASE_URL"),
    server_id: str = typer.Option("", help="free-form server name, e.g. g5-2xlarge-001"),
    base_model: str | None = typer.Option(None, help="served base model the adapters must "
                                          "name; default LORA_BASE_MODEL or the model"),
    voice_url: str | None = typer.Option(None, help="voice service URL (stored)"),
    facial_url: str | None = typer.Option(None, help="facial animation service URL (stored)"),
    body_url: str | None = typer.Option(None, help="body service URL (stored)"),
) -> None:
    """Register archetype chains from PEFT adapters (base model checked); prints them."""
    from inference.lora import registry

    kwargs = dict(server_url=server_url, server_id=server_id, base_model=base_model,
                  voice_service_url=voice_url, facial_service_url=facial_url,
                  body_service_url=body_url)
    if archetype:
        chains = [_registry(registry.provision, root, archetype, **kwargs)]
    else:
        chains = _registry(registry.provision_root, root, **kwargs)
    echo({"archetypes": chains})


@app.command()
def archetypes() -> None:
    """List the registered archetype chains (adapters, broken marks)."""
    from inference.lora import registry

    echo({"archetypes": _registry(registry.list_chains)})


@app.command("set-archetype")
def set_archetype(
    world: str = typer.Argument(..., help="world key"),
    npc_id: str = typer.Argument(..., help="the character's entry key"),
    archetype: str = typer.Argument(..., help="archetype name; '-' clears it"),
) -> None:
    """Set (or clear) a character's archetype."""
    from inference.lora import registry

    echo(_registry(registry.set_character_archetype, world, npc_id,
                    None if archetype == "-" else archetype))
