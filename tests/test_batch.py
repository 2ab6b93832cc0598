import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import synthetic_micrograph, write_png

from microcae.cli import main
from microcae.data.images import read_micrograph, to_uint8
from microcae.data.tiling import TileGrid, extract_tiles, stitch_tiles
from microcae.models.cae import CAE, CAEConfig
from microcae.models.inference import encode_micrograph, reconstruct_micrograph
from microcae.models.registry import save_model
from microcae.pipelines.batch import JOBS, BatchSettings, TileJob, run_batch
from microcae.pipelines.batch.sources import _mirror, open_source
from microcae.saliency import METHODS, relevance
from microcae.util.errors import MicrocaeError
from microcae_testing.mosaic import write_mosaic_tiff

SETTINGS = BatchSettings(tile=32, block=2, batch_size=3, workers=2)


@pytest.fixture
def collection(tmp_path):
    """Images in three formats, sizes not multiples of the tile (mirrored borders)."""
    folder = tmp_path / "in"
    write_png(folder / "a.png", synthetic_micrograph(100, 130, seed=1))
    write_png(folder / "sub" / "tiny.png", synthetic_micrograph(20, 50, seed=4))
    tifffile.imwrite(folder / "b.tif", synthetic_micrograph(150, 90, seed=2).astype(np.uint16)
                     * 200 + 7, tile=(32, 32), compression="zlib")
    tifffile.imwrite(folder / "c.tif", synthetic_micrograph(70, 64, seed=3))  # one strip
    return folder


def _tiles(path, tile=32):
    pixels = read_micrograph(path).pixels
    return extract_tiles(pixels, TileGrid(pixels.shape, tile, tile, "pad")), pixels


def test_mirroring_matches_numpy_symmetric_padding_even_past_a_whole_image():
    for size, pad in [(5, 3), (5, 12), (1, 4), (7, 7)]:
        padded = np.pad(np.arange(size), (0, pad), mode="symmetric")
        np.testing.assert_array_equal(_mirror(np.arange(size + pad), size), padded)


def test_lazily_read_tiles_equal_tiles_cut_from_the_whole_image(collection):
    lazy = {p.name: open_source(p).lazy for p in collection.rglob("*.*")}
    assert lazy == {"a.png": False, "tiny.png": False, "b.tif": True, "c.tif": True}
    for path in collection.rglob("*.*"):
        source = open_source(path)
        expected, pixels = _tiles(path)
        assert source.shape == pixels.shape
        positions = source.grid(32).positions
        np.testing.assert_array_equal(source.read_tiles(positions, 32), expected, err_msg=path)


def test_stores_match_whole_image_inference(collection, tiny_model, tmp_path):
    reports = {name: run_batch([collection], JOBS[name](), tiny_model, tmp_path / f"{name}.zarr",
                               SETTINGS, progress=False) for name in ("encode", "reconstruct")}
    assert reports["encode"].images == 4
    assert reports["encode"].tiles == 20 + 5 * 3 + 3 * 2 + 1 * 2  # a, b, c, tiny
    encoded = zarr.open_group(str(tmp_path / "encode.zarr"), mode="r")
    rebuilt = zarr.open_group(str(tmp_path / "reconstruct.zarr"), mode="r")
    for key in ("a.png", "b.tif", "c.tif", "sub/tiny.png"):
        pixels = read_micrograph(collection / key).pixels
        latents, grid = encode_micrograph(tiny_model, pixels, tile=32)
        stored = encoded[key]["latents"][...]
        assert stored.shape == (*grid.counts, *latents.shape[1:])
        np.testing.assert_allclose(stored.reshape(latents.shape), latents, atol=1e-6)
        np.testing.assert_allclose(rebuilt[key]["reconstruction"][...],
                                   reconstruct_micrograph(tiny_model, pixels, tile=32), atol=1e-6)
        assert encoded[key]["done"][...].all()


def test_saliency_store_holds_per_tile_relevance(collection, tiny_model, tmp_path):
    method = "vjp" if "vjp" in METHODS else "complex-step"
    job = JOBS["saliency"]()
    assert job.options == {"method": method}
    run_batch([collection / "b.tif"], job, tiny_model, tmp_path / "s.zarr", SETTINGS,
              progress=False)
    tiles, pixels = _tiles(collection / "b.tif")
    grid = TileGrid(pixels.shape, 32, 32, "pad")
    with torch.no_grad():
        expected = relevance(tiny_model.encoder, torch.from_numpy(tiles)[:, None], method)
    stored = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["b.tif"]["relevance"]
    assert stored.chunks == (32, 32)
    np.testing.assert_allclose(stored[...], stitch_tiles(expected.numpy(), grid), rtol=1e-5,
                               atol=1e-7)
    # and the saliency package's own whole-micrograph map (the study's tile mode)
    from microcae.saliency.maps import micrograph_relevance

    theirs = micrograph_relevance(tiny_model.encoder, pixels, method, mode="tile", tile=32)
    np.testing.assert_allclose(stored[...], theirs.relevance, rtol=1e-5, atol=1e-7)


class _FailAfter:
    """compute() that works ``calls`` times in all, then fails: an interrupted run.

    Calls are tallied in a file, so the count holds across threads and worker processes.
    """

    def __init__(self, job: TileJob, calls: int, tally: Path) -> None:
        self.job, self.calls, self.tally = job, calls, tally

    def __call__(self, model, batch):
        with open(self.tally, "ab") as handle:
            handle.write(b".")
        if self.tally.stat().st_size > self.calls:
            raise RuntimeError("worker lost")
        return self.job.compute(model, batch)


def _interrupted(job: TileJob, calls: int, tally: Path) -> TileJob:
    return TileJob(job.name, job.array, job.layout, _FailAfter(job, calls, tally), job.options)


def _image_groups(store: Path) -> dict:
    root = zarr.open_group(str(store), mode="r")
    return {name: node for name, node in root.members(max_depth=None)
            if isinstance(node, zarr.Group) and "done" in node}


def _assert_same_store(a: Path, b: Path, array: str) -> None:
    left, right = _image_groups(a), _image_groups(b)
    assert sorted(left) == sorted(right) and left
    for key, group in left.items():
        np.testing.assert_array_equal(group[array][...], right[key][array][...])
        np.testing.assert_array_equal(group["done"][...], right[key]["done"][...])


def test_interrupted_run_restarts_where_it_stopped_with_identical_output(collection,
                                                                         tiny_model, tmp_path):
    settings = BatchSettings(tile=32, block=2, batch_size=4, workers=1)
    clean = run_batch([collection], JOBS["reconstruct"](), tiny_model, tmp_path / "clean.zarr",
                      settings, progress=False)
    out = tmp_path / "run.zarr"
    with pytest.raises(RuntimeError, match="worker lost"):
        run_batch([collection], _interrupted(JOBS["reconstruct"](), 5, tmp_path / "tally"),
                  tiny_model, out, settings, progress=False)
    groups = _image_groups(out).values()
    assert sum(int(g["done"][...].sum()) for g in groups) == 5  # one call per block of ≤4
    unfinished = sum(int(np.isnan(g["reconstruction"][...]).sum()) for g in groups)
    assert unfinished > 0
    resumed = run_batch([collection], JOBS["reconstruct"](), tiny_model, out, settings,
                        progress=False)
    assert resumed.skipped == 5 and resumed.blocks == clean.blocks
    assert 0 < resumed.tiles < clean.tiles
    _assert_same_store(out, tmp_path / "clean.zarr", "reconstruction")


def test_store_of_another_run_or_a_changed_input_is_refused(collection, tiny_model, tmp_path):
    out = tmp_path / "s.zarr"
    run_batch([collection / "a.png"], JOBS["encode"](), tiny_model, out, SETTINGS,
              progress=False)
    with pytest.raises(MicrocaeError, match="another run"):
        run_batch([collection / "a.png"], JOBS["reconstruct"](), tiny_model, out, SETTINGS,
                  progress=False)
    write_png(collection / "a.png", synthetic_micrograph(100, 130, seed=9))
    with pytest.raises(MicrocaeError, match="changed"):
        run_batch([collection / "a.png"], JOBS["encode"](), tiny_model, out, SETTINGS,
                  progress=False)


def test_local_cluster_of_two_workers_resumes_a_collection_of_hundreds_of_tiles(tmp_path,
                                                                                tiny_model):
    distributed = pytest.importorskip("distributed")
    for i in range(16):
        write_png(tmp_path / "many" / f"m{i:02d}.png", synthetic_micrograph(96, 160, seed=i))
    settings = BatchSettings(tile=32, block=2, batch_size=6)
    threads = run_batch([tmp_path / "many"], JOBS["encode"](), tiny_model,
                        tmp_path / "threads.zarr", settings, progress=False)
    assert threads.tiles == 16 * 15
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        out = tmp_path / "cluster.zarr"
        with pytest.raises(RuntimeError, match="worker lost"):
            run_batch([tmp_path / "many"], _interrupted(JOBS["encode"](), 40, tmp_path / "n"),
                      tiny_model, out, settings, scheduler=cluster.scheduler_address,
                      progress=False)
        resumed = run_batch([tmp_path / "many"], JOBS["encode"](), tiny_model, out, settings,
                            scheduler=cluster.scheduler_address, progress=False)
    assert resumed.blocks == 16 * 6 and 40 <= resumed.skipped < resumed.blocks
    assert 0 < resumed.tiles < threads.tiles
    _assert_same_store(out, tmp_path / "threads.zarr", "latents")


def test_cli_batch_writes_a_store_and_continues_it(collection, tiny_model_file, tmp_path,
                                                   capsys):
    args = ["batch", "encode", str(collection), "--model", str(tiny_model_file), "--out",
            str(tmp_path / "s.zarr"), "--tile", "32", "--no-progress"]
    assert main(args) == 0
    assert "0 already done" in capsys.readouterr().out
    assert main([*args, "--export", str(tmp_path / "files")]) == 0
    assert "0 tiles computed" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "files").rglob("*.mcl")) == [
        "a.mcl", "b.mcl", "c.mcl", "tiny.mcl"]
    assert main(["batch", "saliency", str(collection), "--out", str(tmp_path / "x.zarr"),
                 "--model", str(tiny_model_file), "--method", "no-such"]) == 2
    assert "unknown relevance method" in capsys.readouterr().err
    assert main([*args[:-1], "--tile", "40"]) == 2  # tile not a multiple of 4


MEASURE = """
import ctypes, json, resource, sys
from pathlib import Path
from microcae.util.runtime import configure_allocator
configure_allocator()  # now, so that later calls change nothing; then the probe's own settings:
libc = ctypes.CDLL(None)  # blocks of 64 KiB and more are mapped and unmapped when freed, so the
libc.mallopt(-4, 1 << 16)  # resident set is what is live, not what heap fragmentation kept
libc.mallopt(-3, 1 << 16)  # (M_MMAP_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
libc.mallopt(-1, 1 << 16)
from microcae.pipelines.batch import JOBS, BatchSettings, run_batch
from microcae.models.registry import load_model
model_path, out, warm = map(Path, sys.argv[1:4])
images = dict(zip(("encode", "saliency"), map(Path, sys.argv[4:6])))
model = load_model(model_path)
settings = BatchSettings(tile=256, block=2, batch_size=4, workers=2)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for name in images:  # warm up both threads on a small image: imports, pools, working set
    run_batch([warm], JOBS[name](), model, out / f"warm-{name}.zarr", settings, progress=False)
before = peak()
for name, image in images.items():
    run_batch([image], JOBS[name](), model, out / f"{name}.zarr", settings, progress=False)
print(json.dumps({"before": before, "after": peak()}))
"""


def measure_peak_growth(model_file: Path, out: Path, encode: Path, saliency: Path) -> int:
    """Peak RSS growth in bytes of encoding one image and mapping another (fresh process)."""
    warm = write_mosaic_tiff(out / "warm.tif", (1024, 1024))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(model_file), str(out), str(warm),
                           str(encode), str(saliency)], capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(done.stdout.splitlines()[-1])
    return numbers["after"] - numbers["before"]


@pytest.fixture
def shallow_model_file(tmp_path):
    """One-stage CAE: its relevance maps are cheap enough for images of 10^7..10^8 pixels."""
    torch.manual_seed(0)
    path = tmp_path / "shallow.safetensors"
    save_model(CAE(CAEConfig(channels=(2,))).eval(), path)
    return path


def test_memory_stays_bounded_by_tiles_not_the_image(tmp_path, shallow_model_file):
    big = write_mosaic_tiff(tmp_path / "big.tif", (6000, 6000))
    medium = write_mosaic_tiff(tmp_path / "medium.tif", (3000, 3000))
    growth = measure_peak_growth(shallow_model_file, tmp_path, big, medium)
    assert growth < 0.1 * 6000 * 6000 * 4, growth  # a tenth of the image as float32
    stored = zarr.open_group(str(tmp_path / "saliency.zarr"), mode="r")["medium.tif"]
    assert stored["relevance"].shape == (3000, 3000) and stored["done"][...].all()
    assert not np.isnan(stored["relevance"][-300:, -300:]).any()


@pytest.mark.slow
def test_a_14000_pixel_square_tiff_is_encoded_and_mapped_in_bounded_memory(
        tmp_path, shallow_model_file):
    # 196 Mpixel, about 3x the pixel limit of whole-image readers: only tile-wise reading works
    image = write_mosaic_tiff(tmp_path / "huge.tif", (14000, 14000))
    growth = measure_peak_growth(shallow_model_file, tmp_path, image, image)
    assert growth < 0.08 * 20000 * 20000 * 4, growth  # 128 MB: two thirds of the uint8 file
    for name, array in (("encode", "latents"), ("saliency", "relevance")):
        group = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["huge.tif"]
        assert group["done"][...].all()
        assert not np.isnan(group[array][-1]).any()


def test_export_writes_the_per_file_formats(collection, tiny_model, tmp_path):
    from microcae.codec.latent_files import decode_bytes, encode_image
    from microcae.pipelines.batch.export import export_store

    for name in ("encode", "saliency", "reconstruct"):
        run_batch([collection], JOBS[name](), tiny_model, tmp_path / f"{name}.zarr", SETTINGS,
                  progress=False)
    latent_files = export_store(tmp_path / "encode.zarr", tiny_model, tmp_path / "e",
                                progress=False)
    assert sorted(p.relative_to(tmp_path / "e").as_posix() for p in latent_files) == [
        "a.mcl", "b.mcl", "c.mcl", "sub/tiny.mcl"]
    for path in latent_files:
        image = collection / path.relative_to(tmp_path / "e").with_suffix("")
        original = next(image.parent.glob(image.name + ".*"))
        ours = decode_bytes(tiny_model, path.read_bytes(), str(path))
        reference = decode_bytes(tiny_model, encode_image(tiny_model, read_micrograph(original),
                                                          tile=32), "ref")
        assert ours.header.source == reference.header.source
        np.testing.assert_allclose(ours.pixels, reference.pixels, atol=2 / 255)

    maps = export_store(tmp_path / "saliency.zarr", tiny_model, tmp_path / "s", progress=False)
    groups = _image_groups(tmp_path / "saliency.zarr")
    assert len(maps) == len(groups) == 4
    for key, group in groups.items():
        path = tmp_path / "s" / (Path(key).with_suffix("").as_posix() + ".relevance.npy")
        assert path in maps
        np.testing.assert_array_equal(np.load(path), group["relevance"][...])
        assert np.load(path).shape == read_micrograph(collection / key).shape

    pngs = export_store(tmp_path / "reconstruct.zarr", tiny_model, tmp_path / "r",
                        progress=False)
    rebuilt = read_micrograph(tmp_path / "r" / "b.reconstruction.png", scaling="full")
    expected = zarr.open_group(str(tmp_path / "reconstruct.zarr"), mode="r")["b.tif"]
    np.testing.assert_array_equal(rebuilt.as_uint8(), to_uint8(expected["reconstruction"][...]))
    assert len(pngs) == 4

    with pytest.raises(MicrocaeError, match="another model"):
        export_store(tmp_path / "encode.zarr", CAE(CAEConfig(channels=(4, 4))), tmp_path / "x")


@pytest.mark.slow
def test_a_killed_cli_run_restarts_and_ends_with_the_bytes_of_a_clean_run(tmp_path,
                                                                        tiny_model_file):
    import signal
    import time

    for i in range(4):
        write_png(tmp_path / "in" / f"m{i}.png", synthetic_micrograph(256, 768, seed=i))
    common = ["batch", "reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_file),
              "--tile", "32", "--block", "1", "--workers", "1", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "clean.zarr")]) == 0
    out = tmp_path / "killed.zarr"
    process = subprocess.Popen([sys.executable, "-m", "microcae", *common, "--out", str(out)])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        done_chunks = list(out.glob("*/done/c/*/*"))
        if len(done_chunks) > 50:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sum(int(g["done"][...].sum()) for g in _image_groups(out).values())
    assert 0 < finished < 4 * 8 * 24
    assert main([*common, "--out", str(out)]) == 0
    _assert_same_store(out, tmp_path / "clean.zarr", "reconstruction")


def test_cli_reconstruct_on_a_dask_cluster_matches_the_local_run(collection, tiny_model_file,
                                                                 tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    images = [str(collection / "a.png"), str(collection / "b.tif")]
    base = ["reconstruct", *images, "--model", str(tiny_model_file), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        assert main([*base, "--out", str(tmp_path / "dask"), "--scheduler",
                     cluster.scheduler_address]) == 0
    for name in ("a.reconstruction.png", "b.reconstruction.png"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    local, remote = (json.loads((tmp_path / d / "metrics.json").read_text())
                     for d in ("local", "dask"))
    assert local == remote
