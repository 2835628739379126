"""``emprobe models convert X.gguf --out DIR`` and ``emprobe models show SPEC``."""

from __future__ import annotations

import argparse
from pathlib import Path

from emprobe.errors import ModelNotFoundError


def _cmd_convert(args: argparse.Namespace) -> int:
    from emprobe.models.gguf import convert_gguf

    src = Path(args.gguf).expanduser()
    if not src.is_file():
        raise ModelNotFoundError(f"{src}: no such GGUF file")
    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ModelNotFoundError(f"{out}: folder exists and is not empty (pass --force)")
    convert_gguf(src, out)
    print(f"wrote {out} (safetensors, float32; load with transformers, PEFT or "
          f"`emprobe ... --model {out}`)")
    _print_template(out)
    return 0


def _print_template(folder: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    own = getattr(tok, "chat_template", None)
    if own:
        print("chat template: the GGUF's own (used by default)")
    else:
        print("chat template: none in the GGUF; emprobe will use the plain 'User:/Assistant:' "
              "format unless you pass --chat-template NAME|FILE")


def _cmd_show(args: argparse.Namespace) -> int:
    from emprobe.models.subject import load_model
    from emprobe.models.templates import expects_bos

    subject = load_model(args.model)
    print(repr(subject))
    print(f"family:        {subject.layers.family} ({subject.layers.note})")
    print(f"blocks:        {subject.layers.blocks_path}")
    for site, path in subject.layers.site_paths().items():
        print(f"{site + ':':<14} {path}")
    fmt = subject.chat_format
    print(f"chat:          {fmt.describe() if fmt else 'none'}")
    print(f"BOS added:     {expects_bos(subject.tokenizer)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model files: convert a GGUF, show a model's sites")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    c = msub.add_parser("convert", help="de-quantise a GGUF into a safetensors model folder")
    c.add_argument("gguf", help="the .gguf file")
    c.add_argument("--out", required=True, help="the folder to write")
    c.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    c.set_defaults(func=_cmd_convert)
    s = msub.add_parser("show", help="a model's family, site modules and chat template")
    s.add_argument("--model", default="smollm2-135m-instruct",
                   help="embedded name, tiny-*, a .gguf file, a folder or a hub id")
    s.set_defaults(func=_cmd_show)
