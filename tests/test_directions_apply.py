"""Steering / ablation with Directions, random controls and sweeps (tiny model)."""

import pytest
import torch

from emprobe import ablate, capture, load_model, steer
from emprobe.directions import (
    Direction,
    ModelMismatchError,
    coefficient_sweep,
    random_like,
    steered_generate,
)
from emprobe.directions.activations import layer_means


@pytest.fixture
def direction(tiny_llama):
    g = torch.Generator().manual_seed(0)
    return Direction.from_subject(tiny_llama, {1: torch.randn(64, generator=g) * 3,
                                               2: torch.randn(64, 2, generator=g)})


def test_steering_a_direction_matches_its_vector(tiny_llama, direction, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    with steer(s, direction, coeff=2.0, layers=1, positions="response"), capture(s, 1) as c1:
        s.forward(b)
    with steer(s, direction.vector(1), coeff=2.0, layers=1, positions="response"), capture(s, 1) as c2:
        s.forward(b)
    assert torch.allclose(c1["resid_post", 1], c2["resid_post", 1])


def test_ablation_removes_span(tiny_llama, direction, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    with ablate(s, direction, layers=2), capture(s, 2) as c:
        s.forward(b)
    assert (c["resid_post", 2] @ direction.basis(2)).abs().max() < 1e-4
    mu = layer_means(s, chats, layers=[2], positions="all").pooled
    with ablate(s, direction, layers=2, mode="mean", mean=mu), capture(s, 2) as c:
        s.forward(b)
    q = direction.basis(2)
    assert torch.allclose(c["resid_post", 2] @ q, (mu[2] @ q).expand(*c["resid_post", 2].shape[:2], 2),
                          atol=1e-4)


def test_other_model_refused(direction):
    other = load_model("tiny-qwen2")
    with pytest.raises(ModelMismatchError):
        with steer(other, direction, layers=1):
            pass
    with steer(other, direction, layers=1, allow_other_model=True):
        pass


def test_random_like_norms(direction):
    r = random_like(direction, seed=1)
    assert torch.allclose(r.vectors[1].norm(), direction.vectors[1].norm())
    assert torch.allclose(r.vectors[2].norm(dim=0), direction.vectors[2].norm(dim=0))
    assert abs(float(torch.nn.functional.cosine_similarity(r.vectors[1], direction.vectors[1], 0))) < 0.6
    assert torch.equal(random_like(direction, seed=1).vectors[1], r.vectors[1])
    ortho = random_like(direction.orthonormal(), seed=1).vectors[2]
    assert torch.allclose(ortho.T @ ortho, torch.eye(2), atol=1e-5)


def test_sweep_and_generation(tiny_llama, direction, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    v = direction.vector(1)

    def metric(subject):
        with capture(subject, 1) as c:
            subject.forward(b)
        return float((c["resid_post", 1][b.response_mask] @ (v / v.norm())).mean())

    recs = coefficient_sweep(s, direction, [0.0, 1.0, 2.0], metric, layers=1, seed=0)
    assert [r["kind"] for r in recs] == ["direction"] * 3 + ["random"] * 3
    d_vals = [r["value"] for r in recs if r["kind"] == "direction"]
    assert d_vals[1] - d_vals[0] == pytest.approx(float(v.norm()), rel=1e-3)
    assert d_vals[2] - d_vals[0] == pytest.approx(2 * float(v.norm()), rel=1e-3)
    r_vals = [r["value"] for r in recs if r["kind"] == "random"]
    assert abs(r_vals[2] - r_vals[0]) < abs(d_vals[2] - d_vals[0])
    plain = s.generate([chats[0][:1]], max_new_tokens=6)
    big = direction.replace(vectors={1: direction.vector(1) * 30})
    steered = steered_generate(s, big, [chats[0][:1]], coeff=1.0, layers=1, max_new_tokens=6)
    assert plain != steered


def test_misalignment_effect_with_local_score(tiny_llama, direction):
    local = pytest.importorskip("emprobe.evaluate.local")
    from emprobe.directions import misalignment_effect
    from emprobe.evaluate.questions import default_questions

    qs = [q for q in default_questions() if q.reference_pairs][:2]
    res = misalignment_effect(tiny_llama, direction, mode="ablate", questions=qs, n_boot=50)
    for key in ("none", "direction", "random"):
        e = res[key]["per_answer"]
        assert e["lo"] <= e["mean"] <= e["hi"]
    vs = res["versus_controls"]["candidates"][0]  # the one routine's own record
    assert vs["max_delta"] == pytest.approx(
        res["direction"]["per_answer"]["mean"] - res["none"]["per_answer"]["mean"], abs=1e-6)
    assert vs["beats_controls"] == (vs["max_delta"] < res["versus_controls"]["controls"][0]["max_delta"])
    plain = local.local_score(tiny_llama, questions=qs, n_boot=50)
    assert res["none"]["per_answer"]["mean"] == pytest.approx(plain.per_answer.mean)
    assert res["direction"]["per_answer"]["mean"] != pytest.approx(plain.per_answer.mean)
    d = res["delta_direction"]["per_answer"]["mean"]
    assert d == pytest.approx(res["direction"]["per_answer"]["mean"] - plain.per_answer.mean, abs=1e-6)
    from emprobe.errors import EmprobeError

    with pytest.raises(EmprobeError, match="mode"):
        misalignment_effect(tiny_llama, direction, mode="boost", questions=qs)


def test_versus_controls_ranks_candidates_against_equal_norm_controls(tiny_llama, chats):
    from emprobe.evaluate.controls import versus_controls
    from emprobe.hooks import Ablate, Steer

    s = tiny_llama
    b = s.encode_chats(chats)
    target = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(3)), dim=0)

    def metric(subject):  # the mean projection on the target at layer 2
        with capture(subject, 2) as c:
            subject.forward(b)
        return float((c["resid_post", 2][b.response_mask] @ target).mean())

    g = torch.Generator().manual_seed(4)
    randoms = [torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0) for _ in range(3)]
    check = versus_controls(s, [("target", Steer(target, layers=2))],
                            [(i, Steer(r, layers=2)) for i, r in enumerate(randoms)], metric,
                            coeffs=[1.0, 3.0])
    cand = check.candidates[0]
    assert [e["coeff"] for e in cand.scores] == [1.0, 3.0]
    assert cand.scores[1]["delta"] == pytest.approx(3.0, rel=1e-3)  # coeff x unit . unit
    assert cand.beats_controls and cand.control_p == pytest.approx(1 / 4)
    rec = check.to_record()
    assert rec["controls"][0]["control"] is True and "vs_controls" not in cand.scores[0]
    # ablation has no coefficient: a mitigation is scored once, the best delta is the lowest
    abl = versus_controls(s, [("target", Ablate(target, layers=2))], [], metric,
                          effect="decrease")
    assert abl.candidates[0].scores[0]["coeff"] is None
    assert abl.candidates[0].best_delta == pytest.approx(-check.baseline.mean, abs=1e-4)
