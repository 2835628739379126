"""emprobe, TransformerLens and nnsight see the same activations."""

import pytest
import torch

from emprobe.hooks import capture, tl_hook_name
from emprobe.hooks.bridges import to_nnsight, to_transformer_lens

TEXT = ["The river bends twice before it reaches the sea."]


def _emprobe(subject, layer):
    b = subject.encode_texts(TEXT)
    with capture(subject, layers=layer) as cache:
        subject.forward(b)
    return b, cache["resid_post", layer]


def _nnsight_block(nn_model, subject, layer):
    path = subject.layers.blocks_path.split(".")
    mod = nn_model
    for part in path:
        mod = getattr(mod, part)
    return mod[layer]


def _check(subject, layer, atol):
    b, ours = _emprobe(subject, layer)
    tl = to_transformer_lens(subject)
    _, cache = tl.run_with_cache(b.input_ids)
    assert torch.allclose(cache[tl_hook_name("resid_post", layer)], ours, atol=atol)
    nn_model = to_nnsight(subject)
    with nn_model.trace(b.input_ids):
        saved = _nnsight_block(nn_model, subject, layer).output.save()
    saved = saved[0] if isinstance(saved, tuple) else saved
    assert torch.allclose(saved.detach(), ours, atol=atol)
    # the wrappers leave the subject usable and hook-free
    _, again = _emprobe(subject, layer)
    assert torch.allclose(again, ours, atol=atol)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_three_tools_agree_tiny(spec):
    from emprobe import load_model

    _check(load_model(spec), 2, 1e-5)


@pytest.mark.integration
def test_three_tools_agree_embedded(embedded):
    _check(embedded, 15, 1e-3)


def test_to_nnsight_raises_no_deprecation_warning():
    import warnings

    from emprobe import load_model

    subject = load_model("tiny-llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = to_nnsight(subject)
    names = [type(w.message).__name__ + ": " + str(w.message) for w in caught]
    assert not [n for n in names if "eprecat" in n], names
    assert wrapped.tokenizer is subject.tokenizer
