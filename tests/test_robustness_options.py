"""Numeric options are checked while the command line is parsed: one line naming the option."""

from __future__ import annotations

import click
import pytest
from conftest import synthetic_micrograph, write_png

from microcae.cli import main
from microcae.cli.options import FRACTION, POSITIVE_FLOAT, POSITIVE_INT
from microcae.data.dataset import prepare_dataset
from microcae.util.errors import MicrocaeError


@pytest.mark.parametrize(
    ("command", "option", "value", "needle"),
    [
        ("prepare", "--stride", "-5", "-5 is not in the range x>=1"),
        ("prepare", "--stride", "0", "0 is not in the range x>=1"),
        ("prepare", "--tile", "0", "0 is not in the range x>=1"),
        ("prepare", "--tile", "-256", "-256 is not in the range x>=1"),
        ("prepare", "--tile", "1.5", "'1.5' is not a valid integer range"),
        ("prepare", "--test-fraction", "1", "1.0 is not in the range 0<=x<1"),
        ("prepare", "--test-fraction", "nan", "'nan' is not a finite number"),
        ("train", "--lr", "nan", "'nan' is not a finite number"),
        ("train", "--lr", "inf", "'inf' is not a finite number"),
        ("train", "--lr", "-1e-3", "-0.001 is not in the range x>0"),
        ("train", "--epochs", "0", "0 is not in the range x>=1"),
        ("train", "--batch-size", "-1", "-1 is not in the range x>=1"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(tmp_path, capsys, command, option, value, needle):
    write_png(tmp_path / "raw" / "a.png", synthetic_micrograph(64, 64))
    source = tmp_path / "raw" if command == "prepare" else tmp_path / "nothing"
    out = tmp_path / ("ds" if command == "prepare" else "m.safetensors")
    rc = main([command, str(source), "-o", str(out), option, value, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == f"microcae: error: Invalid value for '{option}': {needle}."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # nothing read or written


@pytest.mark.parametrize(
    ("kind", "accepted", "refused"),
    [
        (POSITIVE_INT, {"1": 1, "256": 256}, ["0", "-1", "x", "nan"]),
        (POSITIVE_FLOAT, {"1e-3": 1e-3, "2": 2.0}, ["0", "-1", "nan", "inf", "-inf", "x"]),
        (FRACTION, {"0": 0.0, "0.2": 0.2, "0.999": 0.999}, ["1", "-0.1", "nan", "inf"]),
    ],
)
def test_shared_types_accept_exactly_their_range(kind, accepted, refused):
    for text, value in accepted.items():
        assert kind.convert(text, None, None) == value
    for text in refused:
        with pytest.raises(click.BadParameter):
            kind.convert(text, None, None)


def test_the_library_refuses_a_zero_stride_instead_of_using_the_tile(tmp_path):
    write_png(tmp_path / "raw" / "a.png", synthetic_micrograph(64, 64))
    with pytest.raises(MicrocaeError, match=r"tile \(32\) and stride \(0\) must be positive"):
        prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=32, stride=0, progress=False)
    assert not (tmp_path / "ds").exists()
