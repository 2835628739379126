"""Registering a function on a (site, layer) of a subject, whatever the module's I/O shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.utils.hooks import RemovableHandle

from emprobe.errors import ShapeError, SiteError
from emprobe.hooks.convention import check_site
from emprobe.models.chat import ChatBatch
from emprobe.models.context import active_batch

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

# fn(hidden [batch, pos, d_model]) -> replacement tensor or None (observe only)
SiteFn = Callable[[torch.Tensor], torch.Tensor | None]


class StopForward(Exception):
    """Raised by a capture hook to end the forward pass early (caught by ``capture``)."""


def site_module(subject: Subject, site: str, layer: int) -> tuple[torch.nn.Module, bool]:
    """The module to hook for a site, and whether it is a pre-hook (module input).

    ``attn_out`` / ``mlp_out`` hook the modules ``LayerMap.attn_out`` / ``mlp_out`` name, so
    ``resid_post = resid_pre + attn_out + mlp_out`` in every supported family.
    """
    check_site(site)
    layer = subject.layers.check_layer(layer)
    if site == "resid_pre":
        return subject.layers.blocks[layer], True
    if site == "resid_post":
        return subject.layers.blocks[layer], False
    # the tensor the block adds to its residual stream (after a post-norm where the family
    # has one: emprobe.models.layers)
    mod = (subject.layers.attn_out if site == "attn_out" else subject.layers.mlp_out)[layer]
    if mod is None:
        raise SiteError(f"site {site!r} not found in block {layer} of {subject.name}")
    return mod, False


def add_site_hook(subject: Subject, site: str, layer: int, fn: SiteFn) -> RemovableHandle:
    """Register ``fn`` on ``(site, layer)``; returns the handle (remove it!)."""
    module, is_pre = site_module(subject, site, layer)
    if is_pre:

        def pre_hook(mod: torch.nn.Module, args: tuple, kwargs: dict,
                     ) -> tuple[tuple, dict] | None:
            if args:
                new = fn(args[0])
                if new is not None:
                    return (new, *args[1:]), kwargs
            elif "hidden_states" in kwargs:
                new = fn(kwargs["hidden_states"])
                if new is not None:
                    kwargs = {**kwargs, "hidden_states": new}
                    return args, kwargs
            return None

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(mod: torch.nn.Module, args: tuple, output: object) -> object:
        if isinstance(output, torch.Tensor):
            return fn(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            new = fn(output[0])
            if new is not None:
                return (new, *output[1:])
            return None
        hidden = getattr(output, "last_hidden_state", None)
        if isinstance(hidden, torch.Tensor):
            new = fn(hidden)
            if new is not None:
                setattr(output, "last_hidden_state", new)  # noqa: B010 (ModelOutput, untyped)
            return output
        raise SiteError(f"cannot read the output of {type(mod).__name__} ({type(output).__name__})")

    return module.register_forward_hook(post_hook)


def token_mask(positions: str, hidden: torch.Tensor) -> torch.Tensor | None:
    """Bool mask ``[batch, pos]`` for ``positions`` at hook time, or None for all tokens.

    ``prompt`` / ``response`` need the active batch (set by ``Subject.forward`` /
    ``Subject.generate`` / ``use_batch``). During cached generation the new tokens
    are response tokens.
    """
    if positions == "all":
        return None
    batch: ChatBatch | None = active_batch()
    b, p = hidden.shape[0], hidden.shape[1]
    if batch is not None and batch.input_ids.shape == (b, p):
        return batch.mask(positions).to(hidden.device)
    if positions == "last":
        mask = torch.zeros(b, p, dtype=torch.bool, device=hidden.device)
        mask[:, -1] = True
        return mask
    if batch is not None and batch.input_ids.shape[0] == b:
        # a generation step past the prompt: every new token is a response token
        fill = positions == "response"
        return torch.full((b, p), fill, dtype=torch.bool, device=hidden.device)
    if positions in ("prompt", "response"):
        raise SiteError(
            f"positions={positions!r} needs the tokens' masks: run through Subject.forward / "
            "Subject.generate or wrap the call in emprobe.models.context.use_batch(batch)"
        )
    raise SiteError(f"unknown token positions {positions!r}: use all, prompt, response or last")


def check_width(vec: torch.Tensor, d_model: int, what: str) -> None:
    if vec.shape[-1] != d_model:
        raise ShapeError(f"{what} has width {vec.shape[-1]} but the model's d_model is {d_model}")
