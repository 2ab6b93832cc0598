import json

import numpy as np
import pytest
from conftest import synthetic_micrograph, write_png

from microcae.data.dataset import load_dataset, prepare_dataset, split_sources
from microcae.util.errors import MicrocaeError


@pytest.fixture
def raw_dir(tmp_path):
    root = tmp_path / "raw"
    for group, count in (("steel", 5), ("alloy", 4)):
        for i in range(count):
            write_png(root / group / f"{group}{i}.png", synthetic_micrograph(70 + i, 100, seed=i))
    write_png(root / "steel" / "small.png", synthetic_micrograph(20, 20))
    return root


def test_split_is_by_source_image_and_tiles_match_their_sources(raw_dir, tmp_path):
    ds = prepare_dataset([raw_dir], tmp_path / "ds", tile=32, progress=False)
    manifest = ds.manifest
    train_sources = {t["source"] for t in manifest["tiles"] if t["split"] == "train"}
    test_sources = {t["source"] for t in manifest["tiles"] if t["split"] == "test"}
    assert train_sources and test_sources and not train_sources & test_sources
    for group in ("steel", "alloy"):  # stratified: each group on both sides
        assert any(s.startswith(group) for s in test_sources)
        assert any(s.startswith(group) for s in train_sources)
    for record in manifest["tiles"]:
        pixels = synthetic_micrograph(70 + int(record["source"][-5]), 100,
                                      seed=int(record["source"][-5])) / np.float32(255)
        y, x = record["y"], record["x"]
        np.testing.assert_array_equal(ds.tiles[record["index"]], pixels[y : y + 32, x : x + 32])
    assert manifest["skipped_smaller_than_tile"] == [str(raw_dir / "steel" / "small.png")]
    share = len(ds.indices("test")) / len(ds.tiles)
    assert 0.1 <= share <= 0.35
    sha = {s["file"]: s["sha256"] for s in manifest["sources"]}
    assert len(sha["steel/steel0.png"]) == 64


def test_prepare_is_deterministic_and_seeded(raw_dir, tmp_path):
    a = prepare_dataset([raw_dir], tmp_path / "a", tile=32, seed=5, progress=False)
    b = prepare_dataset([raw_dir], tmp_path / "b", tile=32, seed=5, progress=False)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json").read_bytes()
    np.testing.assert_array_equal(a.tiles, b.tiles)
    splits = {tuple(prepare_dataset([raw_dir], tmp_path / f"s{seed}", tile=32, seed=seed,
                                    progress=False).indices("test")) for seed in range(6)}
    assert len(splits) > 1


def test_split_sources_targets_the_fraction_per_group():
    counts = {f"g/{i}": 10 for i in range(10)}
    split = split_sources(counts, {k: "g" for k in counts}, 0.2, seed=1)
    assert sum(v == "test" for v in split.values()) == 2
    assert split_sources({"only": 5}, {"only": "g"}, 0.2, 0) == {"only": "train"}


def test_stride_and_padding_are_recorded(raw_dir, tmp_path):
    ds = prepare_dataset([raw_dir / "alloy"], tmp_path / "p", tile=32, stride=16,
                         remainder="pad", progress=False)
    assert ds.manifest["stride"] == 16 and ds.manifest["remainder"] == "pad"
    ys = {t["y"] for t in ds.manifest["tiles"] if t["source"] == "alloy0.png"}
    assert ys == {0, 16, 32, 48}


def test_nothing_to_tile_and_existing_output_are_errors(tmp_path, raw_dir):
    write_png(tmp_path / "small" / "s.png", synthetic_micrograph(10, 10))
    with pytest.raises(MicrocaeError, match="nothing to tile"):
        prepare_dataset([tmp_path / "small"], tmp_path / "out", tile=32, progress=False)
    assert not (tmp_path / "out").exists()
    prepare_dataset([raw_dir], tmp_path / "ds", tile=32, progress=False)
    with pytest.raises(MicrocaeError, match="already exists"):
        prepare_dataset([raw_dir], tmp_path / "ds", tile=32, progress=False)
    prepare_dataset([raw_dir], tmp_path / "ds", tile=64, overwrite=True, progress=False)
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["tile"] == 64
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_bad_image_leaves_no_output(tmp_path, raw_dir):
    (raw_dir / "steel" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MicrocaeError, match="broken.png"):
        prepare_dataset([raw_dir], tmp_path / "ds", tile=32, progress=False)
    assert not (tmp_path / "ds").exists()


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(MicrocaeError, match="not a prepared data set"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(MicrocaeError, match="corrupt"):
        load_dataset(tmp_path)


def _split_by_file(prepared):
    return {s["file"]: s["split"] for s in prepared.manifest["sources"]}


def test_split_like_keeps_the_images_of_another_sets_split(raw_dir, tmp_path):
    reference = prepare_dataset([raw_dir], tmp_path / "ref", tile=32, seed=3, progress=False)
    drawn = {seed: _split_by_file(prepare_dataset([raw_dir], tmp_path / f"s{seed}", tile=32,
                                                  stride=16, seed=seed, progress=False))
             for seed in range(4)}
    assert any(split != _split_by_file(reference) for split in drawn.values())
    dense = prepare_dataset([raw_dir], tmp_path / "dense", tile=32, stride=16, seed=0,
                            split_like=tmp_path / "ref", progress=False)
    assert _split_by_file(dense) == _split_by_file(reference)
    assert len(dense.tiles) > len(reference.tiles)
    by_source = {s["file"]: s["split"] for s in dense.manifest["sources"]}
    assert all(t["split"] == by_source[t["source"]] for t in dense.manifest["tiles"])


def test_split_like_refuses_images_the_other_set_lacks(raw_dir, tmp_path):
    prepare_dataset([raw_dir], tmp_path / "ref", tile=32, progress=False)
    write_png(raw_dir / "new" / "unseen.png", synthetic_micrograph(64, 64, seed=99))
    with pytest.raises(MicrocaeError, match="not in the set whose split"):
        prepare_dataset([raw_dir], tmp_path / "all", tile=32, split_like=tmp_path / "ref",
                        progress=False)
    assert not (tmp_path / "all").exists()
