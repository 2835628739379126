"""Pairwise LoRA geometry over many adapters, per module, aggregated per layer and type.

For every module present in all adapters (keyed by ``(layer, module_type)``) and
every pair of adapters: Frobenius cosine, index-paired mean ``|cos|`` of the
top-k singular vectors, mean principal angle (degrees) and projection overlap of
the top-k subspaces, on the right (read, ``d_in``) and left (write, ``d_out``)
sides. Baselines per adapter and module: a norm-matched Gaussian update of the
same rank in factored form, and (when base weights are given) the base weight's
own top-k subspace from a randomized SVD.

Modules are processed one at a time, so peak memory is O(n_adapters d r).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import torch

from emprobe.errors import ConfigError, DataError, ShapeError
from emprobe.geometry.factors import (
    LowRankSVD,
    base_weight_subspace,
    degrees,
    effective_rank,
    expected_random_overlap,
    gaussian_factors,
    lowrank_svd,
    paired_abs_cosines,
    principal_angles,
    projection_overlap,
    top_subspace,
)
from emprobe.models.adapter import LoraAdapter, LoraModule, read_adapter

__all__ = [
    "GeometryConfig",
    "GeometryResult",
    "compare_adapters",
    "pair_metrics",
    "direction_alignment",
    "BaseWeights",
]

SIDES = ("right", "left")
#: A base-weight source: module path -> ``W0 [d_out, d_in]`` (or None when unknown).
BaseWeights = Callable[[str], "torch.Tensor | None"]


@dataclass
class GeometryConfig:
    """Settings of a geometry comparison (serialises to JSON).

    Attributes:
        k: top-k singular vectors compared (capped at each module's rank).
        gaussian_baseline: compare every adapter with a norm-matched Gaussian update.
        base_niter: power iterations of the randomized SVD of base weights.
        seed: seed of the Gaussian baselines and the randomized SVD.
    """

    k: int = 16
    gaussian_baseline: bool = True
    base_niter: int = 4
    seed: int = 0

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def metric_names() -> list[str]:
    """Names of the pairwise metrics, in a fixed order."""
    names = ["frob_cos"]
    for side in SIDES:
        names += [f"abs_cos_{side}", f"angle_{side}", f"overlap_{side}"]
    return names


def pair_metrics(svd1: LowRankSVD, svd2: LowRankSVD, k: int) -> dict[str, float]:
    """Every pairwise metric between two updates of the same module (angles in degrees).

    Works from the two thin SVDs through the cross-Gram matrices ``M_U = U_1^T U_2`` and
    ``M_V = V_1^T V_2`` (``[r1, r2]``, O(d r^2) each), which hold everything needed:

    * ``<dW_1, dW_2>_F = tr(V_1 S_1 U_1^T U_2 S_2 V_2^T) = sum_ij S1_i M_U[i,j] S2_j M_V[i,j]``
      (the trace identity in the SVD basis) and ``|dW|_F = |S|_2``;
    * the top-k block ``C = M[:k, :k]`` is ``Q_1^T Q_2`` of the top-k bases, so paired cosines
      are ``|diag C|``, angles ``arccos(svdvals C)`` and the overlap ``|C|_F^2 / k``.
    """
    # U_1^T U_2 = U_core1^T (Q_left1^T Q_left2) U_core2: no d x r rotation is formed.
    M_U = svd1.U_core.mT @ (svd1.Q_left.mT @ svd2.Q_left) @ svd2.U_core
    M_V = svd1.V_core.mT @ (svd1.Q_right.mT @ svd2.Q_right) @ svd2.V_core
    inner = (svd1.S[:, None] * M_U * svd2.S[None, :] * M_V).sum()
    norms = svd1.S.norm() * svd2.S.norm()
    out = {"frob_cos": _f(inner / norms) if norms > 0 else float("nan")}
    kk = min(k, M_U.shape[0], M_U.shape[1])
    for side, M in (("right", M_V), ("left", M_U)):
        C = M[:kk, :kk]
        out[f"abs_cos_{side}"] = _f(C.diagonal().abs().mean())
        out[f"angle_{side}"] = _f(degrees(torch.arccos(torch.linalg.svdvals(C).clamp(0.0, 1.0)))
                                  .mean())
        out[f"overlap_{side}"] = _f(C.square().sum() / kk)
    return out


def _f(x: torch.Tensor | float) -> float:
    return float(x)


def group_pairs(labels: Sequence[str], groups: Mapping[str, str] | Sequence[str],
                ) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """The adapter pairs ``(i, j)``, ``i < j``, by the pair of their groups ``(a, b)``
    (``a == b``: within a group; otherwise in the groups' first-seen order).

    ``groups``: a group name per label (a list in label order, or a mapping label -> group).
    """
    gl = [groups[lab] for lab in labels] if isinstance(groups, Mapping) else list(groups)
    if len(gl) != len(labels):
        raise ConfigError(f"{len(gl)} groups for {len(labels)} adapters")
    names = sorted(set(gl), key=gl.index)
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i in range(len(gl)):
        for j in range(i + 1, len(gl)):
            a, b = sorted((gl[i], gl[j]), key=names.index)
            out.setdefault((a, b), []).append((i, j))
    return out


@dataclass
class GeometryResult:
    """Pairwise geometry of ``n`` adapters over ``m`` common modules.

    Attributes:
        labels: ``n`` adapter labels.
        modules: ``m`` ``(layer, module_type)`` keys (layer -1 when none).
        pairwise: metric -> ``[n, n, m]`` (symmetric in the first two axes).
        gaussian: metric -> ``[n, m]``: each adapter against its norm-matched Gaussian baseline.
        base: metric -> ``[n, m]``: each adapter against the base weight's top-k (if given).
        stats: metric -> ``[n, m]``: ``frob_norm``, ``effective_rank``, ``top_sv``, ``rank``.
        random_overlap: side -> ``[m]``: the expected overlap ``k/d`` of random subspaces.
    """

    labels: list[str]
    modules: list[tuple[int, str]]
    pairwise: dict[str, torch.Tensor]
    gaussian: dict[str, torch.Tensor] = field(default_factory=dict)
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    random_overlap: dict[str, torch.Tensor] = field(default_factory=dict)
    config: GeometryConfig = field(default_factory=GeometryConfig)

    # ---------- aggregation ----------
    def _select(self, layer: int | None = None, module_type: str | None = None) -> list[int]:
        idx = [i for i, (lay, typ) in enumerate(self.modules)
               if (layer is None or lay == layer) and (module_type is None or typ == module_type)]
        if not idx:
            raise ConfigError(f"no modules at layer={layer} module_type={module_type}")
        return idx

    def matrix(self, metric: str, layer: int | None = None,
               module_type: str | None = None) -> torch.Tensor:
        """``[n, n]``: the metric averaged over the selected modules (NaNs ignored)."""
        return _nanmean(self.pairwise[_check_metric(metric)][..., self._select(layer, module_type)])

    def layers(self) -> list[int]:
        return sorted({lay for lay, _ in self.modules})

    def module_types(self) -> list[str]:
        return sorted({typ for _, typ in self.modules})

    def per_layer(self, metric: str, module_type: str | None = None) -> torch.Tensor:
        """``[n, n, n_layers]``: the metric averaged over the modules of each layer."""
        return torch.stack([self.matrix(metric, layer=lay, module_type=module_type)
                            for lay in self.layers()], dim=-1)

    def per_type(self, metric: str) -> torch.Tensor:
        """``[n, n, n_types]``: the metric averaged over layers for each module type."""
        return torch.stack([self.matrix(metric, module_type=t) for t in self.module_types()], dim=-1)

    def baseline_per_layer(self, which: str, metric: str) -> torch.Tensor:
        """``[n, n_layers]``: a baseline (``gaussian`` or ``base``) averaged per layer."""
        table = self.gaussian if which == "gaussian" else self.base
        if metric not in table:
            raise ConfigError(f"no {which} baseline for {metric!r}")
        return torch.stack([_nanmean(table[metric][:, self._select(layer=lay)])
                            for lay in self.layers()], dim=-1)

    def group_summary(self, groups: Mapping[str, str] | Sequence[str]
                      ) -> dict[str, dict[str, Described] | dict[str, float]]:
        """Mean metrics within each group, across each pair of groups, and baselines.

        Args:
            groups: a group name per label (a list in label order, or a mapping label -> group).

        Returns:
            ``{"within:<g>": {metric: {"mean", "sd", "n", "values"}}, "across:<g1>|<g2>": ...,
            "gaussian": {metric: ...}, "base": {...}}`` with each value an adapter-pair mean
            over modules.
        """
        buckets = {f"within:{a}" if a == b else f"across:{a}|{b}": pairs
                   for (a, b), pairs in group_pairs(self.labels, groups).items()}
        out: dict[str, dict[str, Described] | dict[str, float]] = {}
        for key, pairs in buckets.items():
            per_metric: dict[str, Described] = {}
            for metric in metric_names():
                mat = self.matrix(metric)
                per_metric[metric] = _describe([float(mat[i, j]) for i, j in pairs])
            out[key] = per_metric
        for which, table in (("gaussian", self.gaussian), ("base", self.base)):
            if table:
                out[which] = {m: _describe([float(v) for v in _nanmean(t)]) for m, t in table.items()}
        out["random_overlap_expected"] = {
            s: float(v.mean()) for s, v in self.random_overlap.items()}
        return out

    # ---------- records and files ----------
    def records(self) -> list[dict[str, str | int | float | None]]:
        """One record per (adapter pair i <= j, module), for plotting or pandas."""
        recs: list[dict[str, str | int | float | None]] = []
        n = len(self.labels)
        for i in range(n):
            for j in range(i, n):
                for mi, (lay, typ) in enumerate(self.modules):
                    rec: dict[str, str | int | float | None] = {
                                           "a": self.labels[i], "b": self.labels[j],
                                           "layer": lay, "module_type": typ}
                    for metric, t in self.pairwise.items():
                        rec[metric] = _num(t[i, j, mi])
                    recs.append(rec)
        return recs

    def summary(self) -> dict[str, object]:
        """JSON-ready: config, labels, modules, mean matrices, per-layer matrices, baselines."""
        return {
            "config": self.config.to_dict(),
            "labels": self.labels,
            "layers": self.layers(),
            "module_types": self.module_types(),
            "n_modules": len(self.modules),
            "matrices": {m: self.matrix(m).tolist() for m in self.pairwise},
            "per_layer": {m: self.per_layer(m).tolist() for m in self.pairwise},
            "per_type": {m: self.per_type(m).tolist() for m in self.pairwise},
            "gaussian": {m: _nanmean(t).tolist() for m, t in self.gaussian.items()},
            "base": {m: _nanmean(t).tolist() for m, t in self.base.items()},
            "random_overlap_expected": {s: float(v.mean()) for s, v in self.random_overlap.items()},
            "stats": {m: _nanmean(t).tolist() for m, t in self.stats.items()},
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything as named tensors (for safetensors)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, table in (("pairwise", self.pairwise), ("gaussian", self.gaussian),
                              ("base", self.base), ("stats", self.stats),
                              ("random_overlap", self.random_overlap)):
            for k, v in table.items():
                out[f"{prefix}.{k}"] = v.to(torch.float64).contiguous()
        for m in self.pairwise:
            out[f"per_layer.{m}"] = self.per_layer(m)
        out["module_layers"] = torch.tensor([lay for lay, _ in self.modules], dtype=torch.int64)
        return out

    def save(self, out_dir: str | Path, groups: Mapping[str, str] | Sequence[str] | None = None
             ) -> dict[str, Path]:
        """Write ``summary.json``, ``pairs.jsonl``, ``geometry.safetensors`` (and groups.json)."""
        from emprobe.io import save_tensors, write_json, write_jsonl

        out = Path(out_dir)
        paths = {
            "summary": write_json(out / "summary.json", self.summary()),
            "pairs": write_jsonl(out / "pairs.jsonl", self.records()),
            "tensors": save_tensors(out / "geometry.safetensors", self.tensors(), metadata={
                "labels": ",".join(self.labels),
                "module_types": ",".join(t for _, t in self.modules),
                "config": str(self.config.to_dict()),
            }),
        }
        if groups is not None:
            paths["groups"] = write_json(out / "groups.json", self.group_summary(groups))
        return paths


def _check_metric(metric: str) -> str:
    if metric not in metric_names():
        raise ConfigError(f"unknown geometry metric {metric!r}: use one of {metric_names()}")
    return metric


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _nanmean(t: torch.Tensor) -> torch.Tensor:
    return torch.nanmean(t.to(torch.float64), dim=-1)


class Described(TypedDict):
    """``_describe``: mean, sample SD and count of the non-NaN values, and all the values."""

    mean: float
    sd: float
    n: int
    values: list[float]


def _describe(values: list[float]) -> Described:
    clean = [v for v in values if not math.isnan(v)]
    n = len(clean)
    mean = sum(clean) / n if n else float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": n, "values": values}


def _as_adapter(a: LoraAdapter | str | Path) -> LoraAdapter:
    return a if isinstance(a, LoraAdapter) else read_adapter(a)


def _base_weight_metrics(W0: torch.Tensor, mods: Sequence[LoraModule],  # noqa: N803
                         svds: Sequence[LowRankSVD], cfg: GeometryConfig,
                         stats: dict[str, torch.Tensor], base: dict[str, torch.Tensor],
                         mi: int) -> None:
    """Fill ``base[metric][:, mi]``: each update against the base weight ``W0``'s top-k."""
    nan = float("nan")
    W0 = W0.detach().to(torch.float64)
    if mods[0].fan_in_fan_out:
        W0 = W0.mT
    if tuple(W0.shape) != (mods[0].d_out, mods[0].d_in):
        raise ShapeError(
            f"base weight of {mods[0].name}: {tuple(W0.shape)} but the adapter "
            f"update is {(mods[0].d_out, mods[0].d_in)}")
    bases = {s: base_weight_subspace(W0, cfg.k, s, niter=cfg.base_niter, seed=cfg.seed)
             for s in SIDES}
    w0_norm = W0.norm()
    for i, mo in enumerate(mods):
        # <dW, W0>_F = s tr(A W0^T B): O(d_out d_in r), no dW formed.
        inner = mo.scale * ((W0 @ mo.A.mT) * mo.B).sum()
        denom = stats["frob_norm"][i, mi] * w0_norm
        base["frob_cos"][i, mi] = inner / denom if denom > 0 else nan
        for s in SIDES:
            Q = top_subspace(svds[i], cfg.k, s)
            Qb = bases[s][:, : Q.shape[1]]
            base[f"abs_cos_{s}"][i, mi] = paired_abs_cosines(Q, Qb).mean()
            base[f"angle_{s}"][i, mi] = degrees(principal_angles(Q, Qb)).mean()
            base[f"overlap_{s}"][i, mi] = projection_overlap(Q, Qb)


def compare_adapters(
    adapters: Sequence[LoraAdapter | str | Path],
    labels: Sequence[str] | None = None,
    config: GeometryConfig | None = None,
    base_weights: BaseWeights | Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> GeometryResult:
    """Pairwise geometry of adapters over the modules they all adapt.

    Args:
        adapters: adapter folders or :class:`LoraAdapter` objects (two or more).
        labels: one label per adapter (default: folder names).
        config: :class:`GeometryConfig` (k, baselines, seed).
        base_weights: module path -> base weight ``[d_out, d_in]`` (mapping or callable);
            enables the base-weight baseline.
        progress: show a progress bar over modules.
    """
    from tqdm.auto import tqdm

    cfg = config or GeometryConfig()
    loaded = [_as_adapter(a) for a in adapters]
    if len(loaded) < 1:
        raise DataError("compare_adapters needs at least one adapter")
    labels = list(labels) if labels is not None else [a.label for a in loaded]
    if len(labels) != len(loaded):
        raise ConfigError(f"{len(labels)} labels for {len(loaded)} adapters")
    keyed = [a.by_key() for a in loaded]
    common = set(keyed[0])
    for kd in keyed[1:]:
        common &= set(kd)
    if not common:
        raise DataError("the adapters share no (layer, module_type): nothing to compare")
    modules = sorted(common)
    lookup = base_weights.get if isinstance(base_weights, Mapping) else base_weights
    n, m = len(loaded), len(modules)
    nan = float("nan")
    pairwise = {k: torch.full((n, n, m), nan, dtype=torch.float64) for k in metric_names()}
    gaussian = ({k: torch.full((n, m), nan, dtype=torch.float64) for k in metric_names()}
                if cfg.gaussian_baseline else {})
    base_metric_names = ["frob_cos"] + [f"{x}_{s}" for s in SIDES
                                        for x in ("abs_cos", "angle", "overlap")]
    base = ({k: torch.full((n, m), nan, dtype=torch.float64) for k in base_metric_names}
            if lookup is not None else {})
    stats = {k: torch.full((n, m), nan, dtype=torch.float64)
             for k in ("frob_norm", "effective_rank", "top_sv", "rank")}
    rand = {s: torch.zeros(m, dtype=torch.float64) for s in SIDES}
    gen = torch.Generator().manual_seed(cfg.seed)

    for mi, key in enumerate(tqdm(modules, desc="geometry", disable=not progress, leave=False)):
        mods = [_to64(kd[key]) for kd in keyed]
        shapes = {(mo.d_out, mo.d_in) for mo in mods}
        if len(shapes) > 1:
            raise ShapeError(f"module {key}: adapters disagree on its shape {sorted(shapes)}")
        svds = [lowrank_svd(mo.B, mo.A, mo.scale) for mo in mods]
        k_eff = min(cfg.k, *(mo.rank for mo in mods))
        rand["right"][mi] = expected_random_overlap(mods[0].d_in, k_eff)
        rand["left"][mi] = expected_random_overlap(mods[0].d_out, k_eff)
        for i in range(n):
            norm = svds[i].S.norm()  # |dW|_F
            stats["frob_norm"][i, mi] = norm
            stats["effective_rank"][i, mi] = effective_rank(svds[i].S)
            stats["top_sv"][i, mi] = svds[i].S[0]
            stats["rank"][i, mi] = mods[i].rank
            for j in range(i, n):
                vals = pair_metrics(svds[i], svds[j], cfg.k)
                for name, v in vals.items():
                    pairwise[name][i, j, mi] = pairwise[name][j, i, mi] = v
            if gaussian:
                mo = mods[i]
                gB, gA, gs = gaussian_factors(mo.d_out, mo.d_in, mo.rank, float(norm), gen)
                vals = pair_metrics(svds[i], lowrank_svd(gB, gA, gs), cfg.k)
                for name, v in vals.items():
                    gaussian[name][i, mi] = v
        if base and lookup is not None:
            W0 = lookup(mods[0].name)
            if W0 is not None:
                _base_weight_metrics(W0, mods, svds, cfg, stats, base, mi)
    return GeometryResult(labels=labels, modules=modules, pairwise=pairwise, gaussian=gaussian,
                          base=base, stats=stats, random_overlap=rand, config=cfg)


def _to64(mo: LoraModule) -> LoraModule:
    if mo.A.dtype == torch.float64 and mo.B.dtype == torch.float64:
        return mo
    return LoraModule(name=mo.name, layer=mo.layer, module_type=mo.module_type,
                      A=mo.A.to(torch.float64), B=mo.B.to(torch.float64), scale=mo.scale,
                      rank=mo.rank, alpha=mo.alpha, fan_in_fan_out=mo.fan_in_fan_out)


# ---------- links to activation directions ----------

def _direction_vectors(direction: object) -> Callable[[int], torch.Tensor | None]:
    """Normalise a direction input to ``layer -> [d]`` (None when that layer has none)."""
    if isinstance(direction, torch.Tensor):
        if direction.ndim != 1:
            raise ShapeError(f"direction tensor must be [d], got {tuple(direction.shape)} "
                             "(pass a {layer: [d]} dict for per-layer vectors)")
        return lambda layer: direction
    if isinstance(direction, Mapping):
        table = {int(k): v for k, v in direction.items()}
        return table.get
    vectors = getattr(direction, "vectors", None)
    layers = getattr(direction, "layers", None)
    if isinstance(vectors, Mapping):
        return _direction_vectors(vectors)
    if isinstance(vectors, torch.Tensor) and layers is not None:
        if vectors.ndim == 1:
            return _direction_vectors(vectors)
        return _direction_vectors({int(lay): vectors[i] for i, lay in enumerate(layers)})
    raise DataError(f"cannot read direction vectors from {type(direction).__name__}: pass a "
                    "[d] tensor, a {layer: [d]} dict or an emprobe Direction")


class AlignmentRecord(TypedDict):
    """One module's row of ``direction_alignment`` (cosines are absolute values in [0, 1])."""

    layer: int
    module_type: str
    module: str
    side: str
    abs_cos: list[float]
    max_abs_cos: float
    subspace_cos: float
    random_expected: float


def direction_alignment(
    adapter: LoraAdapter | str | Path,
    direction: object,
    k: int = 16,
    side: str = "auto",
    layer_offset: int = 0,
    component: int = 0,
) -> list[AlignmentRecord]:
    """Cosines of each module's top-k singular vectors with an activation direction.

    Args:
        adapter: the adapter.
        direction: a ``[d]`` tensor (same vector at every layer), a ``{layer: [d]}`` dict, or
            an ``emprobe.directions.Direction``.
        k: number of singular vectors.
        side: ``"left"`` (write side: ``o_proj``, ``down_proj`` write into the residual
            stream), ``"right"`` (read side: q/k/v/gate/up read from it), or ``"auto"``:
            left when the module's ``d_out`` equals the direction width, else right when
            ``d_in`` does; modules of neither width are skipped.
        layer_offset: compare a module at layer ``l`` with the direction at ``l +
            layer_offset`` (0: ``resid_post[l]`` for write-side modules of block ``l``).
        component: the column used where the direction holds a basis ``[d, k_dir]``.

    Returns:
        One record per module: ``layer``, ``module_type``, ``side``, ``abs_cos`` (``[k]``
        list), ``max_abs_cos``, ``subspace_cos`` (norm of the direction's projection onto
        the top-k span, in [0, 1]) and ``random_expected`` (``sqrt(k/d)``).
    """
    ad = _as_adapter(adapter)
    get = _direction_vectors(direction)
    recs: list[AlignmentRecord] = []
    for mo in ad:
        if mo.layer is None:
            continue
        vec = get(mo.layer + layer_offset)
        if vec is None:
            continue
        vec = torch.as_tensor(vec).detach().to(torch.float64)
        if vec.ndim == 2:  # a basis [d, k_dir]: use the requested column
            vec = vec[:, component]
        d = vec.shape[0]
        if side == "auto":
            use = "left" if mo.d_out == d else "right" if mo.d_in == d else None
        else:
            use = side
        if use is None:
            continue
        width = mo.d_out if use == "left" else mo.d_in
        if width != d:
            raise ShapeError(f"direction of width {d} vs {use} side of {mo.name} (width {width})")
        m64 = _to64(mo)
        svd = lowrank_svd(m64.B, m64.A, m64.scale)
        Q = top_subspace(svd, k, use)  # type: ignore[arg-type]
        unit = vec / vec.norm().clamp_min(1e-30)
        cos = (Q.mT @ unit).abs()
        recs.append({"layer": mo.layer, "module_type": mo.module_type, "module": mo.name,
                     "side": use, "abs_cos": cos.tolist(), "max_abs_cos": float(cos.max()),
                     "subspace_cos": float(cos.square().sum().sqrt()),
                     "random_expected": math.sqrt(Q.shape[1] / d)})
    return recs
