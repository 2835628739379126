"""The one layer-list grammar of the CLI: integers, inclusive ranges, nothing else."""

import argparse

import pytest

from emprobe.validate import parse_layers


def test_lists_and_ranges():
    assert parse_layers("3") == [3]
    assert parse_layers("2,5,7") == [2, 5, 7]
    assert parse_layers("10-12,15") == [10, 11, 12, 15]
    assert parse_layers("4-4") == [4]


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "5-3", "1-", "2,2", "1-3,2", ""])
def test_bad_values_are_one_line(bad):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse_layers(bad)
    assert "\n" not in str(err.value)
