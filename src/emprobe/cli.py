"""The ``emprobe`` command: thin wrappers over the public API.

Each capability folder may define ``<area>/cli.py`` with ``register(subparsers)``;
this module wires them in. Every failure ends in one line on stderr and a non-zero exit:
emprobe's own errors and bad arguments (exit 2), file-system errors such as an ``--out``
under a regular file (exit 2), and anything unexpected (exit 1, with a hint to rerun with
``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from emprobe.errors import EmprobeError
from emprobe.validate import one_line, parse_layers

AREAS = ("models", "data", "evaluate", "train", "directions", "sae", "geometry", "recipes")


def _cmd_info(args: argparse.Namespace) -> int:
    from emprobe import __version__
    from emprobe.models import cache_dir
    from emprobe.models.embedded import EMBEDDED_NAME, INSTALL_HINT, embedded_gguf_path

    print(f"emprobe {__version__}")
    for pkg in ("torch", "transformers", "peft", "transformer-lens", "sae-lens", "nnsight",
                "gguf", "plotly", "numpy"):
        try:
            print(f"  {pkg:<16} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"  {pkg:<16} not installed")
    print(f"cache dir:       {cache_dir()}")
    try:
        gguf = embedded_gguf_path()
        print(f"embedded model:  {EMBEDDED_NAME} installed ({gguf})")
        from emprobe.models.embedded import embedded_model_dir

        try:
            print(f"converted cache: {embedded_model_dir(convert=False)}")
        except EmprobeError:
            print("converted cache: not yet (first load de-quantises it, ~30 s)")
    except EmprobeError:
        print(f"embedded model:  not installed (run `{INSTALL_HINT}`)")
    print(f"HF_HUB_OFFLINE:  {os.environ.get('HF_HUB_OFFLINE', 'unset')}")
    import torch

    print(f"device:          {'cuda' if torch.cuda.is_available() else 'cpu'} "
          f"({torch.get_num_threads()} threads)")
    return 0


def _cmd_capture(args: argparse.Namespace) -> int:
    import emprobe
    from emprobe.io import save_tensors

    subject = emprobe.load_model(args.model)
    layers = args.layers if args.layers else [subject.n_layers // 2]
    texts = args.text or ["The quick brown fox jumps over the lazy dog."]
    got = emprobe.collect(subject, texts, layers=layers, site=args.site, positions="all")
    for layer, acts in got.acts.items():
        print(f"{args.site}[{layer}]: {tuple(acts.shape)} mean norm {acts.norm(dim=-1).mean():.3f}")
    if args.out:
        save_tensors(args.out, {f"{args.site}.{k}": v for k, v in got.acts.items()})
        print(f"wrote {args.out}")
    return 0


class ArgumentError(Exception):
    """A bad command line (raised instead of argparse's usage-and-exit)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one ``ArgumentError`` line (subcommand parsers
    inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(f"{self.prog}: {one_line(message, 300)}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="emprobe",
        description="Study and prevent emergent misalignment: hooks, fine-tuning with "
        "interventions, directions, SAEs, LoRA geometry, figures.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error")
    parser.add_argument("--chat-template", metavar="NAME|FILE", default=None,
                        help="chat template for every model the command loads: auto (default: "
                        "the tokenizer's own, else plain with a warning), tokenizer, plain, "
                        "chatml, or a Jinja file; accepted anywhere on the command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="versions, cache folder, embedded model status")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("capture", help="capture activations of texts at a site")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", default=None, type=parse_layers,
                   help="comma-separated layers (default: middle)")
    p.add_argument("--site", default="resid_post")
    p.add_argument("--text", action="append", help="text to run (repeatable)")
    p.add_argument("--out", default=None, help="write activations as safetensors")
    p.set_defaults(func=_cmd_capture)
    for area in AREAS:
        try:
            mod = importlib.import_module(f"emprobe.{area}.cli")
        except ModuleNotFoundError as exc:
            if exc.name == f"emprobe.{area}.cli":
                continue
            raise
        mod.register(sub)
    from emprobe.recipes.series import register as register_series  # `emprobe eval series`

    register_series(_subcommands(sub.choices["eval"]))
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The sub-command action of a parser (to add a command under ``emprobe eval``)."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _pop_chat_template(args: list[str]) -> tuple[list[str], str | None]:
    """Take ``--chat-template X`` / ``--chat-template=X`` from anywhere before a bare ``--``."""
    out: list[str] = []
    value: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out.extend(args[i:])
            break
        if a == "--chat-template":
            if i + 1 >= len(args):
                raise ArgumentError("emprobe: --chat-template needs NAME or FILE")
            value, i = args[i + 1], i + 2
            continue
        if a.startswith("--chat-template="):
            value, i = a.split("=", 1)[1], i + 1
            continue
        out.append(a)
        i += 1
    return out, value


@contextlib.contextmanager
def _chat_template_env(value: str | None) -> Iterator[None]:
    """``load_model`` reads ``$EMPROBE_CHAT_TEMPLATE`` when no template is passed to it."""
    from emprobe.models.templates import ENV_VAR

    before = os.environ.get(ENV_VAR)
    if value is not None:
        os.environ[ENV_VAR] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``emprobe`` command; returns the exit status (0 ok, 2 bad input, 1 unexpected)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # --debug is honoured anywhere before a bare "--"
    cut = args_list.index("--") if "--" in args_list else len(args_list)
    debug = "--debug" in args_list[:cut]
    args_list = [a for i, a in enumerate(args_list) if i >= cut or a != "--debug"]
    try:
        args_list, template = _pop_chat_template(args_list)
        parser = build_parser()
        args = parser.parse_args(args_list)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        with _chat_template_env(template):
            return int(args.func(args) or 0)
    except ArgumentError as exc:
        print(f"emprobe: error: {exc}", file=sys.stderr)
        return 2
    except EmprobeError as exc:
        print(f"emprobe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emprobe: interrupted (finished artifacts were kept)", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            raise
        where = f"{one_line(exc.filename, 200)}: " if exc.filename else ""
        what = exc.strerror or one_line(exc, 200)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            what += " (a file stands where a folder is needed)"
        print(f"emprobe: error: {where}{what}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(f"emprobe: unexpected error: {type(exc).__name__}: {one_line(exc, 200)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
