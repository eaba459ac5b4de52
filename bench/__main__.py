"""The benchmark suite's one entry point.

    python -m bench [names...] [--quick] [--json-out DIR] [--keep-db]
                    [--dataset PATH] [--budget CHARS] [--k N] [--backend B] [--drain-timeout S]
                    [--layouts split,shared]

Runs the named benchmarks (all by default, in the order below) in one environment (private
Redis, fresh PostgreSQL database, zero-latency model server; ``bench.common.Env``), prints
each one's table, writes ``DIR/<name>.json`` (default ``var/bench``) and ends with a summary
table of the targets and whether they were met. ``--quick`` shrinks every benchmark so the
whole suite takes a few minutes (a smoke run; its figures mean little). ``--dataset``,
``--budget``, ``--k``, ``--backend`` and ``--drain-timeout`` are options of ``memory_quality``
and ``--layouts`` one of ``real_model`` (a module's ``OPTIONS`` names the ones its ``run``
takes).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = ["retrieval", "archive", "pipeline", "freshness", "coalescing", "scaling", "canon",
              "hot_path", "lora_route", "memory", "real_model", "memory_quality", "hosts"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="name",
                    help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--json-out", type=Path, default=Path("var/bench"),
                    help="folder for <name>.json (default var/bench)")
    ap.add_argument("--keep-db", action="store_true",
                    help="keep the npcmem_bench_* database afterwards")
    mq = ap.add_argument_group("memory_quality options")
    mq.add_argument("--dataset", type=Path, default=None,
                    help="conversations with questions (default evaluation/data/npc_conversations.json)")
    mq.add_argument("--budget", type=int, default=1200, metavar="CHARS",
                    help="context characters per retrieval (default 1200)")
    mq.add_argument("--k", type=int, default=200, help="most items per retrieval, 1..200 (default 200)")
    mq.add_argument("--backend", default="auto",
                    choices=("auto", "llamacpp", "configured", "zero"),
                    help="model servers: auto (configured if LLM_BASE_URL/Mistral is set, else "
                         "the embedded llama.cpp SmolLM2), zero (plumbing smoke run)")
    mq.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                    help="seconds to wait for the queues (default 900 quick, 7200 full)")
    rm = ap.add_argument_group("real_model options")
    rm.add_argument("--layouts", default=None, metavar="LIST",
                    help="model-server layouts, comma-separated: split, shared (default both, "
                         "the embedded default of this machine first)")
    args = ap.parse_args(argv)
    names = args.names or BENCHMARKS
    if args.layouts is not None:
        from bench.real_model import parse_layouts

        try:
            parse_layouts(args.layouts)
        except ValueError as exc:
            ap.error(str(exc))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    from bench.common import Env, Target, console, print_table, write_json

    summary: list[dict] = []
    failed = 0
    t_all = time.monotonic()
    with Env(keep=args.keep_db) as env:
        for name in names:
            console.rule(f"[bold]{name}[/bold]{' (quick)' if args.quick else ''}")
            mod = importlib.import_module(f"bench.{name}")
            t0 = time.monotonic()
            try:
                opts = {o: getattr(args, o) for o in getattr(mod, "OPTIONS", ())}
                res = mod.run(env, args.quick, **opts)
            except Exception as exc:
                failed += 1
                traceback.print_exc()
                summary.append({"benchmark": name, "figure": "(failed)", "value": str(exc)[:80],
                                "target": "", "met": "error"})
                continue
            finally:
                env.reset_queues()
            res.seconds = time.monotonic() - t0
            res.params["quick"] = args.quick
            print_table(f"{name}: figures", res.rows)
            if res.baseline:
                print_table(f"{name}: baseline (same run)", [res.baseline])
            if res.ratio is not None:
                console.print(f"{name}: ratio {res.ratio}")
            if res.notes:
                console.print(f"[dim]{res.notes}[/dim]")
            path = write_json(res, args.json_out)
            console.print(f"[dim]{path} ({res.seconds:.0f} s)[/dim]")
            for t in res.targets or [Target("(no target)", None, "", 0)]:
                summary.append({"benchmark": name, "figure": t.figure,
                                "value": "" if t.value is None else round(t.value, 3),
                                "target": f"{t.op} {t.threshold:g} {t.unit}".strip() if t.op else "",
                                "met": {True: "yes", False: "NO", None: "-"}[t.met]})
        console.print(f"[dim]logs: {env.tmp}[/dim]")
    console.rule("summary")
    print_table(f"summary ({time.monotonic() - t_all:.0f} s{', quick' if args.quick else ''})",
                summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
