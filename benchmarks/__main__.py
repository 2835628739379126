"""Run every benchmark module and print ratios with the machine they came from."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.record import LoadProbe, load_note, record  # noqa: E402


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{ram:.0f} GB RAM, {dev}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--only", default=None, help="run one module, e.g. hooks")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--table", default="docs/benchmarks.md",
                        help="rewrite this page's table from the results (default "
                             "docs/benchmarks.md; not with --quick; '' to skip)")
    parser.add_argument("--sae-tokens", default=None,
                        help="comma-separated token budgets for bench_sae (default 16384; "
                             "with --only sae: 16384,262144, plus SAELens' multi-SAE runner "
                             "at the first size)")
    parser.add_argument("--sae-precision", default="fp32", choices=["fp32", "bf16"],
                        help="bench_sae: both sides in float32 (default) or bf16 autocast")
    parser.add_argument("--no-sae-multi", action="store_true",
                        help="with --only sae: skip SAELens' multi-SAE runner comparison")
    args = parser.parse_args()
    sae_sizes = None
    if args.sae_tokens:
        sae_sizes = [int(x) for x in args.sae_tokens.split(",") if x.strip()]
    elif args.only == "sae" and not args.quick:
        sae_sizes = [16384, 262144]
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n == f"bench_{args.only}"]
        if not names:
            print(f"no benchmark module bench_{args.only}", file=sys.stderr)
            return 2
    print(f"machine: {machine()}")
    results = []
    start = time.perf_counter()
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        probe = LoadProbe()
        t0 = time.perf_counter()
        first = len(results)
        kwargs: dict = {}
        if name == "bench_sae":
            # --only sae (the long run) also times SAELens' multi-SAE runner at the first size
            kwargs = {"sizes": sae_sizes, "precision": args.sae_precision,
                      "multi": args.only == "sae" and not args.quick and not args.no_sae_multi}
        for res in mod.run(quick=args.quick, **kwargs):
            res.setdefault("module", name)
            results.append(res)
            ratio = res.get("ratio")
            ratio_s = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else str(ratio)
            print(f"{res['name']:<55} {ratio_s:>10}   goal: {res.get('goal', '-')}")
            for k, v in res.get("details", {}).items():
                print(f"    {k}: {v}")
        note = load_note(probe.share())
        for res in results[first:]:
            res["load"] = note
        print(f"  ({name} took {time.perf_counter() - t0:.1f} s; {note})")
    print(f"total: {time.perf_counter() - start:.1f} s (make bench goal: under 600 s on 2 cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    if args.table and not args.quick and results:
        print(f"table: {record(results, machine(), args.table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
