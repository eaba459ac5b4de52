"""``npc-memory evaluate``: run the acceptance scenarios against a dialogue server, with a
progress bar, and write ``results.json`` and ``report.md`` (registered by ``workers/cli/``).

Exit status: 0 every gate passed, 1 a gate failed or had no data, 2 a scenario could not run.
"""

from __future__ import annotations

from pathlib import Path

import typer

SCENARIO_CHOICES = ("vampire-long-conversation", "zombie-horde", "all")


def evaluate(
    scenario: str = typer.Option("all", help=f"one of {', '.join(SCENARIO_CHOICES)}"),
    server: str | None = typer.Option(None, help="dialogue server base URL (default "
                                      "http://WEB_HOST:PORT)"),
    api_key: str | None = typer.Option(None, envvar="NPC_MEMORY_API_KEY", show_default=False,
                                       help="one of the server's API_KEYS (default: the first "
                                            "of API_KEYS)"),
    out: Path = typer.Option(Path("eval-results"), help="folder for results.json and report.md"),
    world: str = typer.Option("saltmere", help="world key (imported on the server)"),
    npc: str = typer.Option("casimir_varga", help="the vampire NPC's id (its entry key)"),
    turns: int = typer.Option(30, min=2, max=500, help="vampire conversation turns"),
    concurrency: int = typer.Option(100, min=1, max=1000,
                                    help="simultaneous horde requests (a horde is 100-300)"),
    horde_npc: list[str] = typer.Option([], help="NPC id(s) for the horde (repeatable; "
                                        "default: the world's zombies, else every character)"),
    timeout: float = typer.Option(300.0, min=1.0, help="seconds per request"),
    dataset: Path | None = typer.Option(
        None, help="run the memory-quality benchmark on this conversation dataset instead "
                   "(LoCoMo-style JSON, e.g. evaluation/data/npc_conversations.json): it starts "
                   "its own stack and writes OUT/memory_quality.json"),
    quick: bool = typer.Option(False, help="--dataset: first conversation, first 2 sessions"),
    budget: int = typer.Option(1200, min=1, help="--dataset: context characters per retrieval"),
    k: int = typer.Option(200, min=1, max=200, help="--dataset: most items per retrieval"),
    backend: str = typer.Option("auto", help="--dataset: auto, llamacpp, configured or zero"),
) -> None:
    """Run the acceptance tests: quality gates (lore accuracy, consistency,
    sentiment; judged by the analysis model) and performance gates (p95 latency, error rate,
    throughput, memory) with thresholds from EVAL_* settings. With ``--dataset``: the
    memory-quality benchmark instead (``python -m bench memory_quality``, same function)."""
    if dataset is not None:
        raise typer.Exit(evaluate_dataset(dataset, out, quick=quick, budget=budget, k=k,
                                          backend=backend))
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evaluation.report import write_reports
    from settings import get_settings
    from evaluation.scenarios import ScenarioError, run_vampire_long_conversation, run_zombie_horde

    if scenario not in SCENARIO_CHOICES:
        typer.echo(f"error: unknown scenario {scenario!r}; one of {', '.join(SCENARIO_CHOICES)}",
                   err=True)
        raise typer.Exit(2)
    cfg = get_settings()
    server = server or f"http://{cfg.web_host}:{cfg.port}"
    api_key = api_key or next(iter(cfg.api_key_list), None)
    names = SCENARIO_CHOICES[:2] if scenario == "all" else (scenario,)
    console = Console(stderr=True)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        for name in names:
            task = bar.add_task(name, total=None)

            def progress(stage: str, done: int, total: int, task=task, name=name) -> None:
                bar.update(task, description=f"{name}: {stage}", completed=done, total=total)

            try:
                if name == "vampire-long-conversation":
                    results.append(run_vampire_long_conversation(
                        server, api_key, world=world, npc=npc, turns=turns, timeout=timeout,
                        progress=progress))
                else:
                    results.append(run_zombie_horde(
                        server, api_key, world=world, npcs=list(horde_npc) or None,
                        concurrency=concurrency, timeout=timeout, progress=progress))
            except (ScenarioError, ValueError) as exc:
                console.print(f"[red]{name} could not run: {escape(str(exc))}[/red]")
                raise typer.Exit(2) from exc
    json_path, md_path = write_reports(results, out)
    for r in results:
        gates = ", ".join(f"{g.name} {g.status}" for g in r.gates)
        typer.echo(f"{r.scenario}: {'PASS' if r.passed else 'FAIL'} ({gates})")
    typer.echo(f"wrote {json_path} and {md_path}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def evaluate_dataset(dataset: Path, out: Path, quick: bool = False, budget: int = 1200,
                     k: int = 200, backend: str = "auto") -> int:
    """``python -m bench memory_quality`` on ``dataset`` (its own private stack; see
    ``bench/memory_quality.py``), writing ``out/memory_quality.json``. Returns the runner's
    exit status (0 ran, 1 the benchmark failed; 2 an invalid dataset, before anything
    starts)."""
    from evaluation.dataset import DatasetError, load_dataset

    try:
        load_dataset(dataset)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    try:
        from bench.__main__ import main as bench_main
    except ImportError as exc:  # bench/ lives in the repository, not in the installed package
        typer.echo(f"error: the benchmark suite (bench/) is not importable: {exc}; run from "
                   f"the repository root", err=True)
        return 2

    argv = ["memory_quality", "--dataset", str(dataset), "--json-out", str(out),
            "--budget", str(budget), "--k", str(k), "--backend", backend]
    return bench_main(argv + (["--quick"] if quick else []))
