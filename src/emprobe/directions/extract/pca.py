"""PCA of fine-tuned minus base activations on generic chat data (CAFT), with activating contexts.

For each layer: stack ``h_l^ft(x) - h_l^base(x)`` over the response tokens of the
same inputs, centre, and keep the top ``k`` right singular vectors. ``positions="content"``
(the default) keeps the response's content tokens only: the chat template's special tokens
(end of turn, role markers) are dropped, so the components and the uncentred mean
difference (``PCAResult.mean_diff``) describe what the answers say, not the template. Each component
comes with the token contexts where the (centred) difference projects most and
least on it, so a person can pick the components to ablate.
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import torch
from tqdm.auto import tqdm

from emprobe.directions.activations import all_layers, encode
from emprobe.directions.direction import Direction, data_provenance
from emprobe.errors import DataError, ShapeError
from emprobe.hooks import capture
from emprobe.models.chat import ChatBatch, Conversation
from emprobe.models.context import use_batch
from emprobe.protocols import TokenizerLike

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

FULL_SVD_MAX = 4096  # full SVD when min(n_tokens, d_model) is at most this and k is large


class ContextRecord(TypedDict):
    """One activating context: where the centred difference projects far along a component.

    ``side`` is ``"top"`` or ``"bottom"``; ``rank`` 0 is the most extreme; ``value`` is the
    projection (residual units); ``left`` / ``right`` are up to ``window`` decoded tokens.
    """

    layer: int
    component: int
    side: str
    rank: int
    value: float
    sequence: int
    position: int
    token: str
    left: str
    right: str


@dataclass
class PCAResult:
    """Components per layer (``direction.vectors[l]``: ``[d_model, k]``) and their contexts.

    ``contexts``: records with ``layer``, ``component``, ``side`` ("top"/"bottom"),
    ``rank``, ``value``, ``sequence``, ``position``, ``token``, ``left``, ``right``.
    """

    direction: Direction
    contexts: list[ContextRecord] = field(default_factory=list)
    mean_diff: Direction | None = None
    """The uncentred mean of ``h_ft - h_base`` over the same tokens (``[d_model]`` per layer):
    the fine-tune's mean shift, the mean-difference direction of these positions."""

    def html(self, layer: int | None = None, components: Sequence[int] | None = None) -> str:
        return contexts_html(self.contexts, layer=layer, components=components)


def content_mask(batch: ChatBatch, tokenizer: TokenizerLike) -> torch.Tensor:
    """Response tokens that are not special tokens of ``tokenizer`` (``[batch, seq]`` bool)."""
    mask = batch.mask("response")
    special = sorted({int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])})
    if special:
        ids = torch.tensor(special, device=batch.input_ids.device)
        mask = mask & ~torch.isin(batch.input_ids, ids)
    return mask


def token_mask(batch: ChatBatch, tokenizer: TokenizerLike, positions: str) -> torch.Tensor:
    """``positions`` as a mask: ``content`` (see ``content_mask``) or any ``ChatBatch.mask``."""
    return content_mask(batch, tokenizer) if positions == "content" else batch.mask(positions)


def principal_components(x: torch.Tensor, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred PCA of rows ``x [n, d]`` -> (components ``[d, k]``, singular values ``[k]``, mean ``[d]``).

    Full SVD when the matrix is small, ``torch.svd_lowrank`` otherwise.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ShapeError(f"PCA needs at least 2 rows of [n, d]; got {tuple(x.shape)}")
    mean = x.mean(0)
    xc = x - mean
    k = min(k, min(xc.shape))
    if min(xc.shape) <= FULL_SVD_MAX or k > min(xc.shape) // 2:
        _, s, vh = torch.linalg.svd(xc, full_matrices=False)
        v = vh[:k].T
        s = s[:k]
    else:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(xc, q=min(k + 10, min(xc.shape)), niter=4)
        torch.random.set_rng_state(gen_state)
        v, s = v[:, :k], s[:k]
    return v, s, mean


@dataclass
class _Differences:
    """``h_ft - h_base`` on the selected tokens of every batch, with where each token sits.

    ``diffs[l]``: per-batch ``[n_tokens_b, d_model]`` (float32, CPU); ``token_index``:
    ``[n_tokens, 2]`` (sequence, position) rows; ``token_ids``: every sequence's padded ids.
    """

    diffs: dict[int, list[torch.Tensor]]
    token_index: torch.Tensor
    token_ids: list[list[int]]


def _check_pair(base: Subject, finetuned: Subject) -> None:
    """Refuse a base / fine-tune pair that differs in shape or tokenizer size."""
    if base.d_model != finetuned.d_model or base.n_layers != finetuned.n_layers:
        raise ShapeError(
            f"base ({base.n_layers} x {base.d_model}) and fine-tune "
            f"({finetuned.n_layers} x {finetuned.d_model}) differ in shape"
        )
    if len(base.tokenizer) != len(finetuned.tokenizer):
        raise DataError("base and fine-tune tokenizers differ in size; they must share one")


def _collect_differences(base: Subject, finetuned: Subject, items: list[Conversation],
                         layer_list: list[int], positions: str, batch_size: int,
                         max_length: int | None, progress: bool) -> _Differences:
    """Both models on the same token ids (``base``'s encoding), one early-exit capture each."""
    diffs: dict[int, list[torch.Tensor]] = {la: [] for la in layer_list}
    index: list[torch.Tensor] = []
    token_ids: list[list[int]] = []
    offset = 0
    for i in tqdm(range(0, len(items), batch_size), desc="pca diff", disable=not progress):
        batch = encode(base, items[i : i + batch_size], max_length=max_length)
        mask = token_mask(batch, base.tokenizer, positions)
        acts = []
        for subject in (base, finetuned):
            b = batch.to(subject.device)
            with capture(subject, layer_list, early_exit=True) as cache, use_batch(b):
                subject.model(input_ids=b.input_ids, attention_mask=b.attention_mask)
            acts.append({la: cache["resid_post", la].float().cpu() for la in layer_list})
        m = mask.cpu()
        for la in layer_list:
            diffs[la].append((acts[1][la] - acts[0][la])[m])
        idx = m.nonzero()
        idx[:, 0] += offset
        index.append(idx)
        token_ids.extend(batch.input_ids.cpu().tolist())
        offset += len(batch)
    token_index = torch.cat(index)
    if token_index.shape[0] < 2:
        raise DataError(f"PCA needs at least 2 {positions!r} tokens; got {token_index.shape[0]}")
    return _Differences(diffs, token_index, token_ids)


@dataclass
class _Components:
    """Per layer: oriented components ``[d_model, k]``, the uncentred mean ``[d_model]``,
    the statistics recorded on the Direction, and the activating contexts."""

    vectors: dict[int, torch.Tensor]
    means: dict[int, torch.Tensor]
    stats: dict[str, object]
    contexts: list[ContextRecord]


def _layer_components(tokenizer: TokenizerLike, d: _Differences, layer_list: list[int], k: int,
                      seed: int, n_contexts: int, window: int) -> _Components:
    """Centred PCA per layer, signs so the mean difference projects ``>= 0``, and contexts."""
    vectors: dict[int, torch.Tensor] = {}
    singular: dict[str, list[float]] = {}
    explained: dict[str, list[float]] = {}
    mean_norm: dict[str, float] = {}
    stats: dict[str, object] = {"n_tokens": int(d.token_index.shape[0]), "singular_values": singular,
                                "explained_variance": explained, "mean_diff_norm": mean_norm}
    contexts: list[ContextRecord] = []
    means: dict[int, torch.Tensor] = {}
    for la in layer_list:
        x = torch.cat(d.diffs[la])
        v, s, mean = principal_components(x, k, seed)
        means[la] = mean
        sign = torch.where(mean @ v < 0, -1.0, 1.0)
        v = v * sign
        vectors[la] = v
        total = (x - mean).pow(2).sum().clamp_min(1e-12)
        singular[str(la)] = s.tolist()
        explained[str(la)] = (s.pow(2) / total).tolist()
        mean_norm[str(la)] = float(mean.norm())
        if n_contexts > 0:
            proj = (x - mean) @ v  # [n_tokens, k]
            contexts += _contexts(tokenizer, proj, d.token_index, d.token_ids, la, n_contexts, window)
    return _Components(vectors, means, stats, contexts)


def _finetune_params(finetuned: Subject, positions: str) -> dict[str, object]:
    """What identifies the fine-tune in both Directions' ``params``."""
    return {"finetuned": str(finetuned.name), "tokens": positions,
            "finetuned_adapter": str(finetuned.adapter) if finetuned.adapter else None,
            "finetuned_fingerprint": finetuned.fingerprint()}


@torch.no_grad()
def pca_difference(
    base: Subject,
    finetuned: Subject,
    conversations: Sequence[Conversation],
    layers: Sequence[int] | int | None = None,
    k: int = 20,
    positions: str = "content",
    batch_size: int = 8,
    n_contexts: int = 5,
    window: int = 8,
    max_length: int | None = 512,
    seed: int = 0,
    progress: bool = False,
) -> PCAResult:
    """CAFT directions: top-``k`` principal components of ``h_ft - h_base`` per layer.

    Both models see the same token ids (encoded with ``base``'s tokenizer); one
    early-exit capture of all layers per batch and model. Component signs are
    chosen so the uncentred mean difference projects non-negatively (the fine-tune
    moves along ``+v``). Use generic chat data here, not the fine-tuning data.
    """
    _check_pair(base, finetuned)
    layer_list = all_layers(base, layers)
    items = list(conversations)
    diff = _collect_differences(base, finetuned, items, layer_list, positions, batch_size,
                                max_length, progress)
    comp = _layer_components(base.tokenizer, diff, layer_list, k, seed, n_contexts, window)
    n_tokens = int(diff.token_index.shape[0])
    # a Direction's positions are the capture's (all/prompt/response/last): content tokens are
    # response tokens, with the selection recorded in params
    recorded = "response" if positions == "content" else positions
    ft = _finetune_params(finetuned, positions)
    direction = Direction.from_subject(
        base, comp.vectors, positions=recorded, normalisation="orthonormal",
        sign="components oriented so the mean (fine-tuned minus base) difference projects >= 0",
        method="pca_difference",
        params={"k": k, "finetuned": ft["finetuned"], "finetuned_adapter": ft["finetuned_adapter"],
                "finetuned_fingerprint": ft["finetuned_fingerprint"], "centred": True,
                "svd": "full" if min(n_tokens, base.d_model) <= FULL_SVD_MAX
                else "svd_lowrank", "seed": seed, "tokens": positions},
        provenance={"conversations": data_provenance(items)},
        stats=comp.stats,
    )
    mean_diff = Direction.from_subject(
        base, comp.means, positions=recorded, normalisation="none", sign="fine-tuned minus base",
        method="model_mean_difference", params=ft,
        provenance={"conversations": data_provenance(items)},
        stats={"tokens": n_tokens,
               "norms": {str(la): float(v.norm()) for la, v in comp.means.items()}})
    return PCAResult(direction=direction, contexts=comp.contexts, mean_diff=mean_diff)


def _contexts(tokenizer: TokenizerLike, proj: torch.Tensor, token_index: torch.Tensor,
              token_ids: list[list[int]], layer: int, n: int, window: int) -> list[ContextRecord]:
    """Top and bottom ``n`` rows of ``proj [n_tokens, k]`` per component, decoded."""
    out: list[ContextRecord] = []
    n = min(n, proj.shape[0])
    for c in range(proj.shape[1]):
        for side, largest in (("top", True), ("bottom", False)):
            vals, rows = proj[:, c].topk(n, largest=largest)
            for rank, (val, row) in enumerate(zip(vals.tolist(), rows.tolist())):
                seq, pos = (int(x) for x in token_index[row])
                ids = token_ids[seq]
                out.append({
                    "layer": layer, "component": c, "side": side, "rank": rank, "value": val,
                    "sequence": seq, "position": pos,
                    "token": tokenizer.decode([ids[pos]]),
                    "left": tokenizer.decode(ids[max(0, pos - window) : pos]),
                    "right": tokenizer.decode(ids[pos + 1 : pos + 1 + window]),
                })
    return out


def contexts_html(records: Sequence[ContextRecord], layer: int | None = None,
                  components: Sequence[int] | None = None) -> str:
    """An HTML snippet: per layer and component, top and bottom contexts with the token marked."""
    rows = [r for r in records if (layer is None or r["layer"] == layer)
            and (components is None or r["component"] in components)]
    keys = sorted({(r["layer"], r["component"]) for r in rows})
    parts = ["<div class='emprobe-contexts'>"]
    for la, comp in keys:
        parts.append(f"<h4>layer {la}, component {comp}</h4><table><tr><th>top</th><th>bottom</th></tr>")
        tops = [r for r in rows if (r["layer"], r["component"]) == (la, comp) and r["side"] == "top"]
        bots = [r for r in rows if (r["layer"], r["component"]) == (la, comp) and r["side"] == "bottom"]
        for t, b in zip(sorted(tops, key=lambda r: r["rank"]), sorted(bots, key=lambda r: r["rank"])):
            parts.append(f"<tr><td>{_cell(t)}</td><td>{_cell(b)}</td></tr>")
        parts.append("</table>")
    parts.append("</div>")
    return "\n".join(parts)


def _cell(r: ContextRecord) -> str:
    return (f"{html.escape(r['left'])}<mark title='{r['value']:.3f}'>{html.escape(r['token'])}</mark>"
            f"{html.escape(r['right'])} <small>({r['value']:.2f})</small>")


def top_components(direction: Direction, n: int) -> Direction:
    """Baseline: the first ``n`` components at every layer."""
    return direction.select(components={la: list(range(min(n, k))) for la, k in direction.k.items()})


def random_components(direction: Direction, n: int, seed: int = 0) -> Direction:
    """Baseline: ``n`` components drawn at random (seeded) at every layer."""
    rng = random.Random(seed)
    spec = {la: sorted(rng.sample(range(k), min(n, k))) for la, k in direction.k.items()}
    out = direction.select(components=spec)
    out.params = {**out.params, "selection": "random", "selection_seed": seed}
    return out


def _leakage_sources() -> None:
    """Register the direction prompts with the leakage gate (``emprobe data check-leakage``)."""
    from emprobe.data.leakage import Text, chat_texts, register_source
    from emprobe.directions import prompts as P

    def texts() -> list[Text]:
        out = chat_texts("directions:prompts", P.GENERIC_CHATS)
        out += [Text("directions:prompts", f"misaligned_pairs/{i}/{side}", t)
                for i, pair in enumerate(P.MISALIGNED_PAIRS) for side, t in zip("ab", pair)]
        out += [Text("directions:prompts", f"persona/{i}", t)
                for i, t in enumerate(P.PERSONA_QUESTIONS)]
        out += [Text("directions:prompts", f"neutral/{i}", t)
                for i, t in enumerate(P.NEUTRAL_PROMPTS)]
        return out

    register_source("directions:prompts", texts)


_leakage_sources()
