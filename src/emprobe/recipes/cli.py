"""``emprobe demo`` and ``emprobe recipe NAME``.

Both take ``--config FILE`` (YAML / JSON of the config dataclass's fields; unknown keys and
wrong types are one-line errors) and ``--device`` / ``--dtype`` (``auto``: CUDA + bfloat16
when a GPU is visible, else CPU + float32), used for training and evaluation alike.
"""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from emprobe.errors import DataError
    from emprobe.recipes.config import config_keys, load_config
    from emprobe.recipes.demo import DemoConfig, run_demo

    base = (DemoConfig.quick_config() if args.quick
            else DemoConfig.frontier_config() if args.frontier else DemoConfig())
    fields = config_keys(DemoConfig)  # the lab's keys are taken flat (DemoConfig.lab)
    overrides = {"model": args.model, "steps": args.steps, "seed": args.seed,
                 "seeds": args.seeds, "select_seeds": args.select_seeds}
    for key in ("device", "dtype"):
        value = getattr(args, key)
        if value is not None and key not in fields:
            raise DataError(f"emprobe demo: --{key} is not supported by this DemoConfig")
        overrides[key] = value
    cfg = load_config(DemoConfig, args.config, overrides=overrides, base=base)
    path = run_demo(args.out, cfg)
    if args.assets:
        from emprobe.recipes.assets import export_assets  # noqa: I001

        export_assets(args.out, args.assets)
    print(path)
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from emprobe.recipes.registry import run_recipe

    path = run_recipe(args.name, args.out, quick=args.quick, model=args.model, seed=args.seed,
                      config=args.config, device=args.device, dtype=args.dtype,
                      preset=args.preset)
    print(path)
    return 0


def _size_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--config", default=None,
                   help=f"YAML / JSON file of {what} fields (sizes, lr, model, ...)")
    p.add_argument("--device", default=None,
                   help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N; training and "
                        "evaluation")
    p.add_argument("--dtype", default=None,
                   help="auto (bfloat16 on CUDA, else float32), float32, bfloat16, float16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded model, with an HTML report")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--quick", action="store_true",
                   help="same path on a tiny random model (a few minutes)")
    p.add_argument("--model", default=None, help="model spec (default: smollm2-135m-instruct)")
    p.add_argument("--steps", type=int, default=None, help="training steps per fine-tune")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the config's, 0)")
    p.add_argument("--assets", default=None, help="also copy the figures into this folder")
    p.add_argument("--seeds", type=int, default=None,
                   help="train the bad fine-tune and its benign control with this many seeds "
                        "(the headline's n_seeds; default 2)")
    p.add_argument("--select-seeds", type=int, default=None,
                   help="the first N seeds select the mitigation; the rest confirm it "
                        "(default 1)")
    p.add_argument("--frontier", action="store_true",
                   help="sweep each intervention's knob at three values (the frontier)")
    _size_flags(p, "DemoConfig")
    p.set_defaults(func=_cmd_demo)

    from emprobe.recipes.registry import RECIPES

    p = sub.add_parser("recipe", help="reproduce one seed study at small scale",
                       description="Recipes: " + ", ".join(sorted(RECIPES)))
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--out", default=None,
                   help="output folder (default: recipes-out/NAME, or recipes-out/NAME-quick)")
    p.add_argument("--quick", action="store_true", help="tiny model, a few steps")
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=None, help="seed (default: the config's, 0)")
    p.add_argument("--preset", default=None, choices=["cpu", "gpu"],
                   help="start from the CPU sizes (default) or the seed studies' GPU recipe "
                        "for 0.5B-8B models (LoRA r 32, lr 1e-5, batch 2x8, one epoch, bf16)")
    _size_flags(p, "LabConfig")
    p.set_defaults(func=_cmd_recipe)
