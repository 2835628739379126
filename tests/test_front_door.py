"""The front door: ``import emprobe`` offers the user's verbs and nouns, lazily, and no plumbing."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import emprobe

VERBS_AND_NOUNS = {
    "load_model", "Subject", "capture", "collect", "steer", "ablate", "record_projections",
    "Steer", "Ablate", "Project", "Direction", "finetune", "TrainConfig", "local_score",
    "compare_scores", "versus_controls", "Estimate", "train_sae", "load_sae", "diff_latents",
    "steering_check", "train_crosscoder", "read_adapter", "compare_adapters", "EmprobeError",
}
PLUMBING = {"as_layer_table", "tl_hook_name", "to_hf_hidden_index", "to_persona_index",
            "use_batch", "SITES"}


def test_the_front_door_names_resolve():
    assert VERBS_AND_NOUNS <= set(emprobe.__all__)
    for name in emprobe.__all__:
        value = getattr(emprobe, name)
        assert value is not None, name
        if name != "__version__":
            assert callable(value), name
    from emprobe.directions.direction import Direction
    from emprobe.hooks import steer

    assert emprobe.steer is steer and emprobe.Direction is Direction


def test_plumbing_stays_in_the_subpackages():
    for name in PLUMBING:
        assert name not in emprobe.__all__
        with pytest.raises(AttributeError):
            getattr(emprobe, name)
    from emprobe.hooks import as_layer_table, tl_hook_name, to_hf_hidden_index  # noqa: F401
    from emprobe.models.context import use_batch  # noqa: F401


def test_import_emprobe_loads_no_model_library():
    code = ("import sys, emprobe; heavy = [m for m in ('torch', 'transformers', 'sae_lens', "
            "'peft', 'plotly') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_the_type_stub_lists_exactly_the_front_door():
    stub = Path(emprobe.__file__).with_suffix(".pyi")
    tree = ast.parse(stub.read_text())
    names = {(a.asname or a.name) for node in tree.body if isinstance(node, ast.ImportFrom)
             for a in node.names}
    assert names == set(emprobe.__all__)
    stub_all = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", "") == "__all__")
    assert {ast.literal_eval(e) for e in stub_all.elts} == set(emprobe.__all__)


def test_protocols_describe_the_real_objects(tiny_llama):
    from emprobe.protocols import CausalLMLike, SubjectLike, TokenizerLike

    assert isinstance(tiny_llama, SubjectLike)
    assert isinstance(tiny_llama.tokenizer, TokenizerLike)
    assert isinstance(tiny_llama.model, CausalLMLike)
    assert not isinstance(object(), SubjectLike)


def test_one_error_hierarchy():
    from emprobe import errors
    from emprobe.directions import ModelMismatchError as from_directions

    assert from_directions is errors.ModelMismatchError
    for name in ("DataError", "FormatError", "ConfigError", "ShapeError", "SiteError",
                 "ModelMismatchError", "ModelNotFoundError", "EndpointError", "QualityError"):
        cls = getattr(errors, name)
        assert issubclass(cls, emprobe.EmprobeError), name
        assert name in errors.__doc__, f"{name} missing from the documented tree"
    from emprobe.recipes.demo import DemoQualityError

    assert issubclass(DemoQualityError, errors.QualityError)
