"""``emprobe demo`` and ``emprobe recipe NAME``."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    from emprobe.recipes.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick_config() if args.quick else DemoConfig()
    if args.model:
        cfg.model = args.model
    if args.steps:
        cfg.steps = args.steps
    cfg.seed = args.seed
    path = run_demo(args.out, cfg)
    if args.assets:
        from emprobe.recipes.assets import export_assets  # noqa: I001

        export_assets(args.out, args.assets)
    print(path)
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from emprobe.recipes.registry import run_recipe

    path = run_recipe(args.name, args.out, quick=args.quick, model=args.model, seed=args.seed)
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded model, with an HTML report")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--quick", action="store_true",
                   help="same path on a tiny random model (under a minute)")
    p.add_argument("--model", default=None, help="model spec (default: smollm2-135m-instruct)")
    p.add_argument("--steps", type=int, default=None, help="training steps per fine-tune")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assets", default=None, help="also copy the figures into this folder")
    p.set_defaults(func=_cmd_demo)

    from emprobe.recipes.registry import RECIPES

    p = sub.add_parser("recipe", help="reproduce one seed study at small scale",
                       description="Recipes: " + ", ".join(sorted(RECIPES)))
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--out", default=None, help="output folder (default: recipes-out/NAME)")
    p.add_argument("--quick", action="store_true", help="tiny model, a few steps")
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_recipe)
