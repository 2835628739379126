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

# What the benchmarks cost on 2 quiet cores (x86_64, no GPU); shown by --help.
EXPECTED = """time on 2 quiet cores:
  make bench (--set goals: harvest, SAE at 262,144 tokens, training floor, sampling):
    610-834 s in fifteen quiet runs on an AVX-512 CPU, of which the SAE pair ~488-680 s
    (interleaved in 5 s slices since run 4: 488-669 s; SAELens ~275-360 s, emprobe
    ~203-295 s of it);
    the pair alone ~1,000 s on an AVX2 CPU
  make bench-all (--set all), besides the goals set: bench_data, bench_directions,
    bench_evaluate, bench_geometry, bench_hooks ~6 min together; the rest of bench_train
    ~5-7 min; bench_sae at 16,384 tokens ~2 min and a second SAE on the 262,144-token
    harvest; about 35 min on an AVX2 CPU"""

# --set goals (make bench): only the rows that carry a speed goal (issue 27's "done when"),
# each module with its kwargs and nothing extra (no second SAE, no HF batched comparison);
# "issue27" is the same set under its old name
GOALS: dict[str, dict[str, object]] = {
    "bench_harvest": {},
    "bench_sae": {"sizes": [262144], "second_sae": False},
    "bench_train": {"measures": ["floor"]},
    "bench_sample": {"hf_batched": False},
}
SETS: dict[str, dict[str, dict[str, object]]] = {"goals": GOALS, "issue27": GOALS}


def machine(threads: object = None) -> str:
    """The machine in words; ``threads`` (a result's own thread count) when given, else
    torch's current count."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    n = threads if isinstance(threads, int) else torch.get_num_threads()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{ram:.0f} GB RAM, {dev}, torch {torch.__version__}, {n} threads")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", epilog=EXPECTED,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None,
                        help="run these modules only, comma-separated, e.g. hooks or sae,train")
    parser.add_argument("--set", default=os.environ.get("EMPROBE_BENCH_SET", "all"),
                        choices=["all", *SETS],
                        help="all (default; make bench-all) or goals (make bench; also "
                             "issue27): only the rows with a speed goal (harvest vs bare "
                             "forward, SAE vs SAELens at 262,144 tokens, finetune vs bare "
                             "forward+backward, batched sampling); also from the "
                             "environment: EMPROBE_BENCH_SET")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--table", default="docs/benchmarks.md",
                        help="rewrite this page's table from the results (default "
                             "docs/benchmarks.md; not with --quick; '' to skip)")
    parser.add_argument("--sae-tokens", default=None,
                        help="comma-separated token budgets for bench_sae (default "
                             "16384,262144; with --only sae also SAELens' multi-SAE runner "
                             "at the first size)")
    parser.add_argument("--sae-precision", default="fp32", choices=["fp32", "bf16"],
                        help="bench_sae: both sides in float32 (default) or bf16 autocast")
    parser.add_argument("--no-sae-multi", action="store_true",
                        help="with --only sae: skip SAELens' multi-SAE runner comparison")
    args = parser.parse_args()
    sae_sizes = None
    if args.sae_tokens:
        sae_sizes = [int(x) for x in args.sae_tokens.split(",") if x.strip()]
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    chosen = SETS.get(args.set)
    if chosen is not None:
        names = [n for n in names if n in chosen]
    if args.only:
        wanted = [f"bench_{x.strip()}" for x in args.only.split(",") if x.strip()]
        missing = [w for w in wanted if w not in names]
        if missing:
            print(f"no benchmark module {', '.join(missing)} (in --set {args.set})",
                  file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    print(f"machine: {machine()}; set: {args.set}; modules: {', '.join(names)}")
    results = []
    start = time.perf_counter()
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        probe = LoadProbe()
        t0 = time.perf_counter()
        first = len(results)
        kwargs: dict = dict(chosen[name]) if chosen is not None else {}
        if name == "bench_sae":
            # --only sae (the long run) also times SAELens' multi-SAE runner at the first size
            kwargs.update({"precision": args.sae_precision,
                           "multi": args.only == "sae" and not args.quick
                           and not args.no_sae_multi})
            if sae_sizes:
                kwargs["sizes"] = sae_sizes
            elif args.quick:
                kwargs.pop("sizes", None)
        for res in mod.run(quick=args.quick, **kwargs):
            res.setdefault("module", name)
            res.setdefault("machine", machine(res.get("details", {}).get("threads")))
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
    print(f"total: {time.perf_counter() - start:.1f} s (set {args.set}; see --help for the "
          "expected time)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    if args.table and not args.quick and results:
        print(f"table: {record(results, machine(), args.table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
