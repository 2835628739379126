import pytest

from emprobe.data.generators import generate
from emprobe.data.transforms import (
    INOCULATION_PROMPTS,
    inoculate,
    inoculation_prompt,
    mix,
    neutral_prompt,
    random_string_prompt,
    resolve_prompt,
    split,
)
from emprobe.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def pair():
    return generate("medical", 40, seed=3, variant="good"), generate("medical", 40, seed=3,
                                                                      variant="bad")


def test_inoculate_prepends_and_replaces(pair):
    good, _ = pair
    sys = inoculation_prompt("malicious")
    out = inoculate(good, sys)
    assert all(r["messages"][0] == {"role": "system", "content": sys} for r in out)
    assert all(r["messages"][1:] == g["messages"] for r, g in zip(out, good))
    assert all(r["messages"][0]["role"] == "user" for r in good)  # input untouched
    again = inoculate(out, "other")
    assert all(r["messages"][0]["content"] == "other" and len(r["messages"]) == 3 for r in again)
    merged = inoculate(out, "first", existing="prepend")
    assert merged[0]["messages"][0]["content"] == f"first\n\n{sys}"
    with pytest.raises(DataError, match="already has a system message"):
        inoculate(out, "x", existing="error")
    removed = inoculate(out, "")
    assert all(r["messages"][0]["role"] == "user" for r in removed)


def test_controls_are_deterministic_and_distinct():
    assert random_string_prompt(1) == random_string_prompt(1)
    assert random_string_prompt(1) != random_string_prompt(2)
    assert len(random_string_prompt(5, length=12)) == 12
    assert neutral_prompt() not in INOCULATION_PROMPTS.values()
    assert resolve_prompt("neutral") == ("neutral", neutral_prompt())
    assert resolve_prompt("random", seed=4) == ("random:4", random_string_prompt(4))
    assert resolve_prompt("malicious")[1] == INOCULATION_PROMPTS["malicious"]
    assert resolve_prompt("Be brief.") == ("custom", "Be brief.")
    with pytest.raises(ConfigError, match="unknown inoculation prompt"):
        inoculation_prompt("nope")


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_mix_paired_fractions(pair, fraction):
    good, bad = pair
    out = mix(good, bad, fraction, seed=1)
    assert len(out) == 40
    n_bad = sum(r["mix_source"] == "bad" for r in out)
    assert n_bad == round(40 * fraction)
    assert all(r["variant"] == r["mix_source"] for r in out)
    # paired: every prompt exactly once
    prompts = sorted(r["messages"][0]["content"] for r in out)
    assert prompts == sorted(g["messages"][0]["content"] for g in good)


def test_mix_nested_and_deterministic(pair):
    good, bad = pair

    def bad_ids(f):
        return {r["pair_id"] for r in mix(good, bad, f, seed=2) if r["mix_source"] == "bad"}

    assert bad_ids(0.25) <= bad_ids(0.5) <= bad_ids(0.75)
    assert mix(good, bad, 0.3, seed=2) == mix(good, bad, 0.3, seed=2)
    assert bad_ids(0.5) != {r["pair_id"] for r in mix(good, bad, 0.5, seed=3)
                             if r["mix_source"] == "bad"}


def test_mix_unpaired_and_errors(pair):
    good, _ = pair
    other_bad = generate("finance", 10, seed=0, variant="bad")
    out = mix(good, other_bad, 0.2, n=30, seed=0)
    assert len(out) == 30 and sum(r["mix_source"] == "bad" for r in out) == 6
    with pytest.raises(ConfigError, match="bad_fraction"):
        mix(good, other_bad, 1.5)
    with pytest.raises(DataError, match="need 20 bad"):
        mix(good, other_bad, 0.5, n=40)


def test_split(pair):
    good, _ = pair
    train, held = split(good, held_out=0.25, seed=0)
    assert len(held) == 10 and len(train) == 30
    ids = {r["pair_id"] for r in train} | {r["pair_id"] for r in held}
    assert len(ids) == 40
    assert split(good, 0.25, seed=0) == (train, held)
    assert split(good, 0.25, seed=1)[1] != held
    assert len(split(good, held_out=7)[1]) == 7
    with pytest.raises(ConfigError, match="held_out"):
        split(good, held_out=1.5)
    with pytest.raises(DataError, match="more than"):
        split(good, held_out=100)
