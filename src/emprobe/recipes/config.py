"""Configs from files: ``load_config(cls, path, overrides)`` for any dataclass, and device choice.

A config file is YAML or JSON holding one mapping whose keys are the dataclass's field names.
Unknown keys and values of the wrong type are one-line ``DataError``s naming the file and the
key. ``overrides`` (e.g. from command-line flags) win over the file; ``None`` values in
``overrides`` are ignored, so unset flags leave the file's value alone.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from emprobe.errors import DataError
from emprobe.evaluate.questions import Question

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["load_config", "config_from_dict", "config_keys", "check_types", "resolve_device",
           "resolve_dtype", "Nested", "RecipeOptions", "recipe_options"]

T = TypeVar("T")


def _excerpt(value: object, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _matches(value: object, hint: object) -> bool:
    """Whether ``value`` (as parsed from YAML / JSON) fits the type hint ``hint``."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # YAML writes 1e-5 as a string in some dialects; ints are fine floats
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(hint)
        return not args or all(_matches(v, args[1]) for v in value.values())
    return isinstance(value, hint) if isinstance(hint, type) else True


def _coerce(value: object, hint: object) -> object:
    """Small, lossless coercions: YAML strings like ``"1e-5"`` to float, ints to float."""
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_types(obj: DataclassInstance, where: str) -> None:
    """Raise a one-line ``DataError`` if a dataclass instance holds a value of the wrong type
    (ints are accepted for float fields and converted)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints.get(f.name, Any)
        value = getattr(obj, f.name)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))
            continue
        if not _matches(value, hint):
            want = getattr(hint, "__name__", None) or str(hint)
            raise DataError(f"{where}: {f.name} must be {want}, got {_excerpt(value)}")


NestFn = Callable[[dict[str, object], dict[str, object], str], None]


@runtime_checkable
class Nested(Protocol):
    """A config class that also takes flat keys and folds them into its nested parts."""

    @classmethod
    def flat_keys(cls) -> dict[str, object]:
        """Accepted keys that are not fields -> their type hints."""
        ...

    @classmethod
    def nest(cls, values: dict[str, object], flat: dict[str, object], where: str) -> None:
        """Fold ``flat`` (checked against ``flat_keys``) into the field ``values``."""
        ...


def config_keys(cls: type) -> set[str]:
    """Every key ``config_from_dict(cls, ...)`` accepts: init fields and flat keys."""
    keys = {f.name for f in dataclasses.fields(cls) if f.init}
    keys |= {k for k, h in typing.get_type_hints(cls).items() if isinstance(h, dataclasses.InitVar)}
    return keys | set(_nesting(cls)[0])


def _checked(value: object, hint: object, key: str, where: str,
             base: object = None) -> object:
    """``value`` coerced and checked against ``hint``; a mapping for a nested dataclass
    field becomes that dataclass (``base``: the current one, whose values it changes)."""
    if _dataclass_hint(hint) and isinstance(value, dict):
        assert isinstance(hint, type)
        return config_from_dict(hint, value, where=f"{where}: {key}",
                                base=base if isinstance(base, hint) else None)
    value = _coerce(value, hint)
    if not _matches(value, hint):
        want = getattr(hint, "__name__", None) or str(hint)
        raise DataError(f"{where}: {key} must be {want}, got {_excerpt(value)}")
    return value


def config_from_dict(cls: type[T], data: object, where: str = "config",
                     base: T | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types; one-line errors.

    ``base``: an instance whose values fill the fields ``data`` does not name (default: the
    class defaults). A class with ``flat_keys`` / ``nest`` (``Nested``) also takes those
    keys and folds them into its nested configs; a nested dataclass field also takes a
    mapping of its own keys.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a mapping of field names to values, got "
                        f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    for name, hint in hints.items():  # init-only fields are keys too
        if isinstance(hint, dataclasses.InitVar):
            fields.append(name)
            hints[name] = hint.type
    flat_hints, nest = _nesting(cls)
    unknown = sorted(set(data) - set(fields) - set(flat_hints))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(map(str, unknown))[:120]}; "
                        f"{cls.__name__} fields are {', '.join(fields)}"[:300])
    values: dict[str, object] = {}
    if base is not None:
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls) if f.init}
    flat: dict[str, object] = {}
    for key, value in data.items():
        if key in fields:
            current = values[key] if key in values else _default(cls, key)
            values[key] = _checked(value, hints.get(key, Any), key, where, current)
        elif _dataclass_hint(flat_hints[key]):
            flat[key] = value  # a nested config's own keys: ``nest`` checks them
        else:
            flat[key] = _checked(value, flat_hints[key], key, where)
    try:
        if flat and nest is not None:
            nest(values, flat, where)
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            msg = str(exc)
            raise DataError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        raise DataError(f"{where}: {str(exc).splitlines()[0][:200]}") from None


def _default(cls: type, name: str) -> object:
    """The default value of field ``name`` of dataclass ``cls`` (``None`` when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def _dataclass_hint(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _nesting(cls: type) -> tuple[dict[str, object], NestFn | None]:
    """A ``Nested`` class's flat keys and its ``nest``; ``({}, None)`` for others."""
    if issubclass(cls, Nested):
        return cls.flat_keys(), cls.nest
    return {}, None


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, object] | None = None, base: T | None = None) -> T:
    """A ``cls`` instance from ``base`` (or the defaults), then the file at ``path``, then
    ``overrides`` (``None`` values skipped). YAML (``.yaml`` / ``.yml``) or JSON."""
    data: dict[str, object] = {}
    where = cls.__name__
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise DataError(f"{p}: no such config file")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            import json

            try:
                loaded = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        else:
            import yaml

            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f", line {mark.line + 1}" if mark is not None else ""
                raise DataError(f"{p}: not valid YAML{line}") from None
            loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise DataError(f"{p}: expected a mapping of field names to values, got "
                            f"{type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, data, where=where, base=base)


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str = "auto", device: str = "auto") -> str:
    """``"auto"`` -> ``"bfloat16"`` on CUDA (when supported), else ``"float32"``."""
    if dtype != "auto":
        return dtype
    import torch

    dev = resolve_device(device)
    if dev.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


@dataclasses.dataclass
class RecipeOptions:
    """The recipe-specific knobs of ``LabConfig.extra``, typed and checked (issue 22).

    ``None`` means the recipe's own default (named per field). Unknown keys and values of
    the wrong type are one-line ``DataError`` s naming ``LabConfig.extra`` and the key.

    Fields: ``seeds`` training seeds (every recipe that fine-tunes, except shared-subspaces
    whose ten adapters each have their own seed: 3 in full mode, 1 in quick mode unless set;
    persona-features' population: 3, quick mode 2); ``fractions`` bad-data shares
    (data-thresholds: 0-1 in 0.25 steps; persona-features: 0, 0.05, 0.1, 0.25, 0.5, 1); ``models`` extra model specs for
    format-sensitivity (names or paths for ``emprobe.load_model``); ``inoculation`` the
    inoculation prompt's key; ``domain`` / ``unlearn`` narrow-unlearning's target domain and
    method (``npo`` or ``ga``); ``score_questions``, ``population_steps``, ``prompt_pairs``,
    ``steer_latents``, ``random_controls``, ``realign_ns`` persona-features' sizes;
    ``held_out_kind`` school-of-reward-hacks' unseen task kind; ``questions`` score-validity's
    question set (``Question`` objects; default: the local score's)."""

    seeds: int | None = None
    fractions: list[float] | None = None
    models: list[str] = dataclasses.field(default_factory=list)
    inoculation: str = "malicious"
    domain: str = "cybersecurity"
    unlearn: str = "npo"
    score_questions: int | None = None
    population_steps: int | None = None
    prompt_pairs: int = 1
    steer_latents: int = 1
    random_controls: int | None = None
    realign_ns: list[int] | None = None
    held_out_kind: str = "tests"
    questions: list[Question] | None = None

    def __post_init__(self) -> None:
        def bad(what: str) -> DataError:
            return DataError(f"LabConfig.extra: {what}")

        if self.seeds is not None and self.seeds < 1:
            raise bad(f"seeds must be >= 1, got {self.seeds}")
        if self.fractions is not None and not all(0.0 <= f <= 1.0 for f in self.fractions):
            raise bad(f"fractions must lie in [0, 1], got {self.fractions}")
        if self.unlearn not in ("npo", "ga"):
            raise bad(f"unlearn must be npo or ga, got {self.unlearn!r}")
        for key in ("prompt_pairs", "steer_latents"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}")


def recipe_options(cfg: object) -> RecipeOptions:
    """A ``LabConfig``'s ``options`` (an object with an ``extra`` mapping: checked)."""
    options = getattr(cfg, "options", None)
    if isinstance(options, RecipeOptions):
        return options
    return config_from_dict(RecipeOptions, dict(getattr(cfg, "extra", None) or {}),
                            where="LabConfig.extra")
