"""The one table writer: Markdown cells, CSV and JSON values, and results rendered through it."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from microcae.evaluation.attack import AttackResult
from microcae.util.table_writer import Column, Table, json_text, markdown_table, write_table

ATTACK = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "attack"


def test_markdown_formats_each_column_and_marks_missing_values():
    rows = [{"name": "a", "x": 0.123456, "n": 3}, {"name": "b", "x": math.nan, "n": None}]
    table = Table.of(rows, [Column("name"), Column("x", "x (dB)", ".2f"), "n"])
    assert table.markdown() == ("| name | x (dB) | n |\n|---|---|---|\n| a | 0.12 | 3 |\n"
                                "| b | – | – |\n")
    assert markdown_table([{"v": np.float32(2.0) / 3}]) == "| v |\n|---|\n| 0.6667 |\n"


def test_csv_and_json_keep_raw_values(tmp_path):
    rows = [{"name": "a", "x": 1 / 3, "n": np.int64(2)}, {"name": "b", "x": math.inf, "n": 1}]
    parsed = list(csv.DictReader(io.StringIO(Table.of(rows).csv())))
    assert parsed[0] == {"name": "a", "x": repr(1 / 3), "n": "2"} and parsed[1]["x"] == "inf"
    assert json.loads(Table.of(rows).json()) == [{"name": "a", "x": 1 / 3, "n": 2},
                                                 {"name": "b", "x": None, "n": 1}]
    paths = write_table(rows, tmp_path, "t")
    assert paths["md"].read_text() == Table.of(rows).markdown()
    assert json.loads(paths["json"].read_text())[1]["x"] is None
    assert json_text({"a": np.arange(2)}) == '{\n "a": [\n  0,\n  1\n ]\n}\n'


def test_stored_attack_run_round_trips_and_renders_its_table_byte_for_byte():
    stored = (ATTACK / "attack.json").read_text()
    result = AttackResult.from_json(json.loads(stored))
    assert json_text(result.to_json()) == stored
    assert result.to_table().markdown() == (ATTACK / "attack.md").read_text()
