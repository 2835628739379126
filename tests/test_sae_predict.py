"""AUROC and correlation math with bootstrap intervals."""

from __future__ import annotations

import pytest
import torch

from emprobe.errors import DataError
from emprobe.evaluate.stats import Estimate
from emprobe.sae.predict import auroc, pearson, predictor_stats, spearman


def test_auroc_known_values_and_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1.0, 1.0], [0, 1]) == pytest.approx(0.5)
    assert auroc([3, 2, 1], [1, 0, 0]) == 1.0 and auroc([3, 2, 1], [0, 1, 1]) == 0.0
    with pytest.raises(DataError):
        auroc([1, 2], [1, 1])


def test_auroc_matches_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (40,), generator=gen).float()
    y = torch.randint(0, 2, (40,), generator=gen)
    pos, neg = s[y == 1], s[y == 0]
    brute = sum((1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg)
    assert auroc(s, y) == pytest.approx(brute / (len(pos) * len(neg)))


def test_correlations():
    x = torch.arange(10.0)
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    from scipy.stats import pearsonr, spearmanr

    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, generator=gen), torch.randn(30, generator=gen)
    b[:5] = b[5]  # ties
    assert pearson(a, b) == pytest.approx(pearsonr(a, b)[0])
    assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0])


def test_predictor_stats_intervals():
    latent = [0.1, 0.2, 0.15, 0.9, 1.1, 0.8, 0.3, 1.0]
    scores = [-5.0, -4.0, -4.5, 2.0, 3.0, 1.0, -3.0, 2.5]
    out = predictor_stats(latent, scores, threshold=0.0, n_boot=300)
    assert out["n_models"] == 8 and out["n_misaligned"] == 4
    assert isinstance(out["auroc"], Estimate) and isinstance(out["spearman"], Estimate)
    assert out["auroc"].mean == 1.0 and out["auroc"].lo <= 1.0 and out["auroc"].hi == 1.0
    assert out["pearson"].lo <= out["pearson"].mean <= out["pearson"].hi
    noisy = predictor_stats([0.5, 0.1, 0.9, 0.2, 0.4, 0.3], [1, -1, -2, 2, 0.5, -0.5],
                            threshold=0.0, n_boot=300)
    assert noisy["auroc"].lo < noisy["auroc"].mean < noisy["auroc"].hi
    one_class = predictor_stats([1, 2, 3], [1, 2, 3], labels=[1, 1, 1], n_boot=50)
    assert one_class["auroc"] is None and one_class["auroc_p"] is None
    # perfect separation of 4 vs 4: exactly one of the C(8, 4) = 70 label sets reaches it
    assert out["auroc_p"] == pytest.approx(1 / 70)


def test_auroc_p_value_exact_and_sampled():
    from scipy.stats import mannwhitneyu

    from emprobe.sae.predict import auroc_p_value

    x = [0.3, 0.9, 0.1, 0.8, 0.5, 0.7, 0.2, 0.6, 0.4, 0.55]
    y = [0, 1, 0, 1, 0, 1, 0, 0, 1, 1]
    exact = auroc_p_value(x, y)  # C(10, 5) = 252 label sets, enumerated
    assert exact == pytest.approx(mannwhitneyu([a for a, b in zip(x, y) if b],
                                               [a for a, b in zip(x, y) if not b],
                                               alternative="greater", method="exact").pvalue)
    sampled = auroc_p_value(x, y, n_perm=100, seed=1)  # 252 > 100: random shuffles
    assert abs(sampled - exact) < 0.1 and sampled >= 1 / 101
    with pytest.raises(DataError):
        predictor_stats([1, 2], [1, 2], threshold=0)
    with pytest.raises(DataError):
        predictor_stats([1, 2, 3], [1, 2, 3])
