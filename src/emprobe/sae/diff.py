"""SAE model diffing: which latents change between a base model and its fine-tune.

Three rankings over the latents ``i`` of one SAE at ``(site, layer)``, on the same
conversations run through both models (same tokens, so rows pair up). By default only
response (assistant) tokens ``t`` count: template and system-prompt tokens are the same
text in every conversation, and latents that fire on them (e.g. on SmolLM2's default
system prompt) would otherwise dominate the ranking.

- ``mean_diff[i] = mean_t f_i(h_ft[t]) - mean_t f_i(h_base[t])``
- ``encoded_diff[i] = (mean_t (h_ft[t] - h_base[t])) . W_enc[:, i]`` (the linear part of the
  encoder applied to the mean activation difference; the nonlinearity would zero most
  of a difference vector) and ``decoder_cos[i] = cos(W_dec[i], mean difference)``
- ``attribution[i] = sum_t (W_dec[i] . dL/dh[t]) * f_i(h[t])`` over the fine-tune's answer
  tokens, with ``L`` the fine-tune's summed next-token loss on its answers: the first-order
  change in that loss if latent ``i`` were removed (negative = the latent helps produce them).

``top_contexts`` shows where each candidate fires in a corpus (default:
``emprobe.sae.corpus.context_corpus``) with the token marked ``[[like this]]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F

from emprobe.errors import DataError, ShapeError
from emprobe.hooks.capture import Collected, collect
from emprobe.hooks.core import add_site_hook
from emprobe.io import write_json
from emprobe.models.chat import Conversation
from emprobe.models.context import use_batch
from emprobe.models.logprobs import response_logprobs
from emprobe.protocols import SAELike

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

RANKINGS = ("mean_diff", "encoded_diff", "attribution")

Data = Sequence[Conversation] | Sequence[str]


class _LatentRecordRequired(TypedDict):
    latent: int
    mean_base: float
    mean_ft: float
    mean_diff: float
    encoded_diff: float
    decoder_cos: float


class LatentRecord(_LatentRecordRequired, total=False):
    """One latent's scores; ``rank_<by>``: how many latents score higher by that ranking."""

    attribution: float
    rank_mean_diff: int
    rank_encoded_diff: int
    rank_attribution: int


class Context(TypedDict):
    """One top-activating token: its activation, sequence, position, token and the text
    around it with the token marked ``[[token]]``."""

    activation: float
    item: int
    pos: int
    token: str
    text: str


@torch.no_grad()
def encode_rows(sae: SAELike, h: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """SAE latents of activation rows: ``[rows, d_in]`` -> ``[rows, d_sae]`` (float32, CPU)."""
    out = [sae.encode(h[i : i + chunk].to(sae.device, sae.dtype)).float().cpu()
           for i in range(0, h.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, int(sae.cfg.d_sae))


def token_acts(subject: Subject, data: Data, site: str, layer: int, positions: str = "all",
               batch_size: int = 8, max_length: int = 512,
               ) -> tuple[torch.Tensor, torch.Tensor, Collected]:
    """Activation rows ``[n, d]`` of ``data``'s selected tokens at ``(site, layer)``, each
    sequence's first token (an attention sink) dropped, with their ``[n, 2]`` (sequence,
    position) index and the whole ``Collected`` (for its token ids)."""
    got = collect(subject, data, layers=[layer], site=site, positions=positions,
                  batch_size=batch_size, max_length=max_length)
    if got.token_index is None:
        raise DataError("SAE activations: no tokens collected")
    keep = got.token_index[:, 1] > 0
    return got.acts[layer][keep], got.token_index[keep], got


def check_sae_fits(subject: Subject, sae: SAELike, what: str) -> None:
    if int(sae.cfg.d_in) != subject.d_model:
        raise ShapeError(f"SAE d_in {sae.cfg.d_in} does not match {what}'s d_model {subject.d_model}")


@dataclass
class DiffResult:
    """Per-latent scores (each ``[d_sae]``) and the prompts' summary numbers."""

    mean_base: torch.Tensor
    mean_ft: torch.Tensor
    mean_diff: torch.Tensor
    encoded_diff: torch.Tensor
    decoder_cos: torch.Tensor
    attribution: torch.Tensor | None = None
    n_tokens: int = 0
    resid_norm: float = 0.0  # mean ||h_base|| over the tokens (a steering scale)
    meta: dict[str, object] = field(default_factory=dict)

    def top(self, by: str = "mean_diff", n: int = 10, absolute: bool = False) -> list[int]:
        """Latent ids with the largest score (``absolute`` ranks by magnitude)."""
        score = self.score(by)
        score = score.abs() if absolute else score
        return torch.argsort(score, descending=True)[:n].tolist()

    def score(self, by: str) -> torch.Tensor:
        if by not in RANKINGS:
            raise DataError(f"unknown ranking {by!r}: use one of {', '.join(RANKINGS)}")
        s = getattr(self, by)
        if s is None:
            raise DataError(f"ranking {by!r} was not computed (give answers for attribution)")
        # attribution: negative means the latent lowers the fine-tune's loss on its answers
        return -s if by == "attribution" else s

    def latent_record(self, i: int) -> LatentRecord:
        rec: LatentRecord = {
            "latent": int(i),
            "mean_base": float(self.mean_base[i]),
            "mean_ft": float(self.mean_ft[i]),
            "mean_diff": float(self.mean_diff[i]),
            "encoded_diff": float(self.encoded_diff[i]),
            "decoder_cos": float(self.decoder_cos[i]),
        }
        if self.attribution is not None:
            rec["attribution"] = float(self.attribution[i])
        ranks = {by: int((self.score(by) > self.score(by)[i]).sum())
                 for by in RANKINGS if getattr(self, by) is not None}
        if "mean_diff" in ranks:
            rec["rank_mean_diff"] = ranks["mean_diff"]
        if "encoded_diff" in ranks:
            rec["rank_encoded_diff"] = ranks["encoded_diff"]
        if "attribution" in ranks:
            rec["rank_attribution"] = ranks["attribution"]
        return rec


def diff_latents(
    base: Subject,
    ft: Subject,
    sae: SAELike,
    site: str,
    layer: int,
    data: Sequence[Conversation] | Sequence[str],
    positions: str = "response",
    batch_size: int = 8,
    max_length: int = 256,
) -> DiffResult:
    """Encode the same ``data`` through ``base`` and ``ft`` with one SAE; score every latent.

    ``positions``: ``"response"`` (default: assistant tokens of conversations, every token
    of plain strings), ``"prompt"`` or ``"all"``; each sequence's first token is dropped.
    """
    check_sae_fits(base, sae, "the base model")
    check_sae_fits(ft, sae, "the fine-tuned model")
    if not data:
        raise DataError("diff: no prompts given")
    h_base, _, _ = token_acts(base, data, site, layer, positions, batch_size, max_length)
    h_ft, _, _ = token_acts(ft, data, site, layer, positions, batch_size, max_length)
    if h_base.shape != h_ft.shape or h_base.shape[0] == 0:
        raise DataError(
            f"diff: base and fine-tune gave {tuple(h_base.shape)} vs {tuple(h_ft.shape)} rows; "
            "they must share a tokenizer and the data must select some tokens"
        )
    f_base, f_ft = encode_rows(sae, h_base), encode_rows(sae, h_ft)
    delta = (h_ft - h_base).mean(0)
    w_enc = sae.W_enc.detach().float().cpu()  # [d_in, d_sae]
    w_dec = sae.W_dec.detach().float().cpu()  # [d_sae, d_in]
    return DiffResult(
        mean_base=f_base.mean(0),
        mean_ft=f_ft.mean(0),
        mean_diff=f_ft.mean(0) - f_base.mean(0),
        encoded_diff=delta @ w_enc,
        decoder_cos=F.cosine_similarity(w_dec, delta.unsqueeze(0), dim=-1),
        n_tokens=int(h_base.shape[0]),
        resid_norm=float(h_base.norm(dim=-1).mean()),
        meta={"site": site, "layer": int(layer), "positions": positions, "n_items": len(data),
              "base": base.name, "ft": ft.name,
              "ft_adapter": str(ft.adapter) if ft.adapter else None},
    )


def answer_attribution(
    subject: Subject,
    sae: SAELike,
    site: str,
    layer: int,
    conversations: Sequence[Conversation],
    batch_size: int = 4,
    max_length: int = 256,
) -> torch.Tensor:
    """``[d_sae]``: ``sum_t (W_dec[i] . dL/dh[t]) * f_i(h[t])`` over answer tokens ``t``.

    ``L`` is the summed next-token loss of ``subject`` on the assistant tokens of
    ``conversations``; ``h`` the activation at ``(site, layer)``. Only the activation gets a
    gradient (the weights are untouched).
    """
    check_sae_fits(subject, sae, "the model")
    w_dec = sae.W_dec.detach().float()
    total = torch.zeros(int(sae.cfg.d_sae))
    n_tokens = 0
    for i in range(0, len(conversations), batch_size):
        batch = subject.encode_chats(list(conversations[i : i + batch_size]),
                                     max_length=max_length)
        resp = batch.response_mask
        if not resp[:, 1:].any():
            continue
        holder: dict[str, torch.Tensor] = {}
        handle = add_site_hook(subject, site, layer, _leaf_hook(holder))
        try:
            with torch.enable_grad(), use_batch(batch):
                logits = subject.model(input_ids=batch.input_ids,
                                       attention_mask=batch.attention_mask).logits
                loss = -response_logprobs(logits, batch)[0].sum()  # summed response NLL
                (grad,) = torch.autograd.grad(loss, holder["h"])
        finally:
            handle.remove()
        # answer tokens t: the activation at t-1 predicts token t, and the answer's own
        # positions carry the latent; use positions whose next token is an answer token
        sel = torch.zeros_like(resp)
        sel[:, :-1] = resp[:, 1:]
        h = holder["h"].detach()[sel].float()
        g = grad[sel].float()
        with torch.no_grad():
            f = encode_rows(sae, h)
            total += ((g.cpu() @ w_dec.T.cpu()) * f).sum(0)
        n_tokens += int(sel.sum())
    if n_tokens == 0:
        raise DataError("attribution: the conversations have no assistant tokens")
    return total


def _leaf_hook(holder: dict[str, torch.Tensor]):  # noqa: ANN202
    """A site hook that swaps the activation for a grad-requiring leaf kept in ``holder``."""

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        leaf = hidden.detach().requires_grad_(True)
        holder["h"] = leaf
        return leaf

    return fn


@torch.no_grad()
def top_contexts(
    subject: Subject,
    sae: SAELike,
    site: str,
    layer: int,
    corpus: Sequence[Conversation] | Sequence[str],
    latents: Sequence[int],
    n: int = 5,
    window: int = 10,
    batch_size: int = 8,
    max_length: int = 256,
    positions: str = "all",
) -> dict[int, list[Context]]:
    """The ``n`` highest activations of each latent over ``corpus``'s tokens, with context.

    ``positions`` limits the firing tokens (e.g. ``"response"``); the context window shows
    the surrounding tokens whatever their role.

    Each context: ``{"activation", "item", "pos", "token", "text"}`` where ``text`` shows up
    to ``window`` tokens either side with the firing token marked ``[[token]]``.
    """
    h, index, got = token_acts(subject, corpus, site, layer, positions, batch_size, max_length)
    feats = encode_rows(sae, h)[:, list(latents)]  # [rows, n_latents]
    tok = subject.tokenizer
    pad_id = tok.pad_token_id
    out: dict[int, list[Context]] = {}
    for j, latent in enumerate(latents):
        vals, rows = torch.topk(feats[:, j], k=min(n, feats.shape[0]))
        items: list[Context] = []
        for v, r in zip(vals.tolist(), rows.tolist(), strict=True):
            if v <= 0:
                break
            seq, pos = (int(x) for x in index[r])
            ids = got.token_ids[seq]
            left = tok.decode(ids[max(0, pos - window) : pos])
            mid = tok.decode(ids[pos : pos + 1])
            right_ids = ids[pos + 1 : pos + 1 + window]
            if pad_id in right_ids:  # right padding: stop at the first pad / end-of-turn
                right_ids = right_ids[: right_ids.index(pad_id) + 1]
            right = tok.decode(right_ids)
            items.append(Context(activation=float(v), item=seq, pos=pos, token=mid,
                                 text=f"{left}[[{mid}]]{right}"))
        out[int(latent)] = items
    return out


def write_diff(
    result: DiffResult,
    out_dir: str | os.PathLike[str],
    candidates: Sequence[int],
    contexts: dict[int, list[Context]] | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Write ``diff.json`` (meta + candidate records with contexts) and ``scores.safetensors``."""
    from emprobe.io import save_tensors

    folder = Path(out_dir)
    tensors = {k: getattr(result, k) for k in ("mean_base", "mean_ft", "mean_diff",
                                                "encoded_diff", "decoder_cos")}
    if result.attribution is not None:
        tensors["attribution"] = result.attribution
    save_tensors(folder / "scores.safetensors", tensors)
    records: list[dict[str, object]] = []
    for i in candidates:
        rec: dict[str, object] = {**result.latent_record(i)}
        if contexts is not None:
            rec["contexts"] = contexts.get(int(i), [])
        records.append(rec)
    return write_json(folder / "diff.json", {
        **result.meta, "n_tokens": result.n_tokens, "resid_norm": result.resid_norm,
        **(extra or {}), "candidates": records,
    })


def pick_candidates(result: DiffResult, n_per_ranking: int = 5) -> list[int]:
    """The union of the top ``n_per_ranking`` latents of every computed ranking (ordered)."""
    seen: list[int] = []
    for by in RANKINGS:
        if getattr(result, by) is None:
            continue
        for i in result.top(by, n_per_ranking):
            if i not in seen:
                seen.append(i)
    return seen
