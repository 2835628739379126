"""Which chat format a subject uses, its stop tokens, and whether its tokenizer wants a BOS.

The rule (docs/models.md):

1. A tokenizer with its own chat template uses it (``chat_template=None`` or ``"auto"``).
2. A tokenizer without one gets the plain ``User:`` / ``Assistant:`` format, announced by a
   ``ChatTemplateWarning`` once per model; it writes no special tokens except the
   tokenizer's own EOS after each assistant turn. No other model's special tokens (e.g.
   ChatML's ``<|im_start|>``) are ever installed silently.
3. An explicit choice overrides both: ``"tokenizer"`` (its own, an error when it has none),
   ``"plain"``, ``"chatml"`` (only when the vocabulary has ChatML's tokens), a path to a
   Jinja file, or Jinja text.

Stop tokens come from the template in use: the special token the template writes right
after an assistant message's content (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>`` ...),
then the tokenizer's EOS. BOS is added exactly when the tokenizer's own encoding adds it
(``expects_bos``) and the rendered text does not already start with it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHATML_TEMPLATE",
    "NAMED_TEMPLATES",
    "PLAIN_TEMPLATE",
    "ChatFormat",
    "ChatTemplateWarning",
    "expects_bos",
    "resolve_chat_format",
]

ENV_VAR = "EMPROBE_CHAT_TEMPLATE"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""``User: ...`` / ``Assistant: ...`` lines; the assistant turn ends with the tokenizer's EOS."""

PLAIN_STOP_STRINGS = ("\nUser:",)
NAMED_TEMPLATES = ("auto", "tokenizer", "plain", "chatml")
_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
_PROBE = "emprobe probe answer 7"
_ANNOUNCED: set[str] = set()


class ChatTemplateWarning(UserWarning):
    """A model without a chat template fell back to the plain ``User:/Assistant:`` format."""


@dataclass(frozen=True)
class ChatFormat:
    """The chat format a subject uses.

    Attributes:
        name: ``tokenizer`` | ``plain`` | ``chatml`` | ``file`` | ``custom``.
        template: the Jinja template (installed as ``tokenizer.chat_template``).
        stop_ids: token ids that end an assistant turn (end-of-turn marker first, then EOS).
        stop_strings: text that ends a turn when no token does (``"\\nUser:"`` for plain).
        source: where it came from, for messages (a file path, "the tokenizer", ...).
    """

    name: str
    template: str
    stop_ids: tuple[int, ...]
    stop_strings: tuple[str, ...] = ()
    source: str = ""

    def describe(self) -> str:
        stops = ", ".join(str(i) for i in self.stop_ids) or "none"
        return f"chat template {self.name!r} ({self.source}; stop token ids {stops})"


def expects_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own encoding starts a text with its BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    return bool(ids) and ids[0] == bos


def resolve_chat_format(tokenizer: PreTrainedTokenizerBase, choice: str | os.PathLike[str] | None = None,
                        model_name: str = "model") -> ChatFormat:
    """Pick the chat format (module docstring), install it on ``tokenizer`` and return it.

    ``choice`` None falls back to ``$EMPROBE_CHAT_TEMPLATE`` (set by the CLI's
    ``--chat-template``), then ``"auto"``.
    """
    if choice is None:
        choice = os.environ.get(ENV_VAR) or "auto"
    choice = str(choice)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default")
    if choice == "auto":
        if isinstance(own, str) and own:
            return _install(tokenizer, "tokenizer", own, "the tokenizer's own")
        _announce(model_name)
        return _install(tokenizer, "plain", PLAIN_TEMPLATE,
                        "fallback: the tokenizer has no chat template")
    if choice == "tokenizer":
        if not (isinstance(own, str) and own):
            raise ConfigError(f"{model_name}: chat_template='tokenizer' but its tokenizer has "
                              "no chat template; choose plain, chatml or a Jinja FILE")
        return _install(tokenizer, "tokenizer", own, "the tokenizer's own")
    if choice == "plain":
        return _install(tokenizer, "plain", PLAIN_TEMPLATE, "chosen explicitly")
    if choice == "chatml":
        _check_chatml(tokenizer, model_name)
        return _install(tokenizer, "chatml", CHATML_TEMPLATE, "chosen explicitly")
    return _from_text_or_file(tokenizer, choice, model_name)


def _from_text_or_file(tokenizer: PreTrainedTokenizerBase, choice: str, model_name: str) -> ChatFormat:
    if "{%" in choice or "{{" in choice:
        return _install(tokenizer, "custom", choice, "Jinja text given")
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(f"{model_name}: chat_template {choice!r} is neither one of "
                          f"{', '.join(NAMED_TEMPLATES)} nor a readable Jinja file")
    text = path.read_text(encoding="utf-8")
    if "{%" not in text and "{{" not in text:
        raise ConfigError(f"{path}: chat_template file holds no Jinja template")
    return _install(tokenizer, "file", text, str(path))


def _check_chatml(tokenizer: PreTrainedTokenizerBase, model_name: str) -> None:
    vocab = tokenizer.get_vocab()
    missing = [t for t in _CHATML_TOKENS if t not in vocab]
    if missing:
        raise ConfigError(f"{model_name}: chat_template='chatml' needs the tokens {missing}, "
                          "which its vocabulary lacks; use plain or a Jinja FILE")


def _announce(model_name: str) -> None:
    if model_name in _ANNOUNCED:
        return
    _ANNOUNCED.add(model_name)
    warnings.warn(
        f"{model_name}: the tokenizer has no chat template; using the plain 'User:/Assistant:' "
        "format (choose another with chat_template= or --chat-template NAME|FILE)",
        ChatTemplateWarning, stacklevel=4)


def _install(tokenizer: PreTrainedTokenizerBase, name: str, template: str, source: str) -> ChatFormat:
    tokenizer.chat_template = template
    stops = _stop_ids(tokenizer)
    strings = PLAIN_STOP_STRINGS if template == PLAIN_TEMPLATE else ()
    return ChatFormat(name, template, stops, strings, source)


def _stop_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The special token written right after an assistant message's content, then EOS."""
    out: list[int] = []
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation has no marker
        rendered = ""
    text = rendered if isinstance(rendered, str) else ""
    at = text.rfind(_PROBE)
    tail = text[at + len(_PROBE):].strip() if at >= 0 else ""
    if tail:
        ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= set((getattr(tokenizer, "added_tokens_decoder", None) or {}).keys())
        if ids and ids[0] in special:
            out.append(int(ids[0]))
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int) and eos not in out:
        out.append(eos)
    return tuple(out)
