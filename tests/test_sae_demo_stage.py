"""The demo's SAE stage on a tiny model: the record it returns and its quality mark."""

from __future__ import annotations

import pytest

from emprobe import load_model
from emprobe.sae.corpus import generic_chats

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sae_stage_record(tiny_llama, tmp_path):
    from emprobe.recipes.demo import DemoConfig
    from emprobe.recipes.demo_sae import sae_stage

    cfg = DemoConfig.quick_config(sae_layer=2, sae_tokens=600, sae_latents=128, sae_k=8,
                                  n_generic=4, seed=0, sae_epochs=2, sae_steer=1,
                                  sae_controls=2, sae_diff_pairs=0, sae_steer_questions=0)
    generic = [{"messages": c} for c in generic_chats(4, seed=3)]
    ft = load_model("tiny-llama")
    out = sae_stage(tiny_llama, ft, generic, cfg, tmp_path)
    m, q = out["metrics"], out["quality"]
    assert m["harvest_rows"] == 600 and m["epochs"] == 2
    assert m["dead_fraction"] == pytest.approx(1 - m["frac_alive"])
    assert q["explained_variance"] == m["explained_variance"]
    assert q["ok"] == (m["explained_variance"] >= 0.7 and m["dead_fraction"] <= 0.1)
    assert ("passes" if q["ok"] else "FAILS") in out["text"]
    assert len(out["latents"]) == 10 and all("contexts" in x for x in out["latents"])
    steer = out["steering"]
    assert len(steer["latents"]) == 1 and len(steer["controls"]) == 2
    assert all(c["control"] for c in steer["controls"])
    assert "beats_controls" in steer["latents"][0]
    assert (tmp_path / "sae" / "cfg.json").is_file()
