import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png

from microcae.data.dataset import prepare_dataset
from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import read_model_file
from microcae.training.distributed import ProcessGroup
from microcae.training.loop import train
from microcae.training.settings import TrainSettings


@pytest.mark.parametrize("items", [0, 1, 3, 5, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_partition_the_global_batch_in_order(items, world):
    shards = [ProcessGroup(rank, world).shard(items) for rank in range(world)]
    covered = [i for s in shards for i in range(items)[s]]
    assert covered == list(range(items))
    sizes = [len(range(items)[s]) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def _torchrun(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2",
               "-m", "microcae", "train", *args, "--no-progress"]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_gloo_processes_resume_and_train_like_one_with_the_same_global_batch(tmp_path):
    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 96, seed=i))
    data = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=32, progress=False)
    # batch 5 over 2 ranks: shares of 3 and 2 tiles, so the loss weighting is exercised
    settings = TrainSettings(epochs=3, batch_size=5, lr=3e-3, seed=3)
    tiny = partial(CAE, CAEConfig(channels=(4, 4)))
    single = train(data, tmp_path / "one.safetensors", settings, build_model=tiny,
                   progress=False)

    # epoch 1 on one process, then resumed by two processes for epochs 2 and 3
    out = tmp_path / "two.safetensors"
    train(data, out, TrainSettings(**{**settings.__dict__, "epochs": 1}), build_model=tiny,
          progress=False)
    stdout = _torchrun([str(tmp_path / "ds"), "--out", str(out), "--batch-size", "5", "--lr",
                        "0.003", "--seed", "3", "--channels", "4,4", "--epochs", "3",
                        "--resume", "--force"], tmp_path)
    # rank 0 alone reports
    assert stdout.count("epoch 2:") == 1 and stdout.count("epoch 3:") == 1
    assert stdout.count("trained 3 epochs") == 1

    stored = read_model_file(out)
    assert stored.provenance["processes"] == 2
    assert stored.provenance["epochs_completed"] == 3
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(stored.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    ours = [row["train_mse"] for row in stored.provenance["history"]]
    np.testing.assert_allclose(ours, [row["train_mse"] for row in single.history], rtol=1e-4)


def test_two_gloo_processes_train_a_coding_model_even_with_an_empty_share(tmp_path):
    from microcae.models.registry import read_model_file

    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 96, seed=i))
    data = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=32, progress=False)
    # the last global batch holds one tile: the second rank's share of it is empty
    batch = len(data.indices("train")) - 1
    out = tmp_path / "rd.safetensors"
    stdout = _torchrun([str(tmp_path / "ds"), "--out", str(out), "--arch", "rd-study",
                        "--lmbda", "0.05", "--channels", "4,4", "--epochs", "2",
                        "--batch-size", str(batch)], tmp_path)
    assert stdout.count("epoch 2:") == 1 and stdout.count("trained 2 epochs") == 1
    stored = read_model_file(out)
    assert stored.provenance["processes"] == 2
    assert stored.provenance["settings"]["lmbda"] == 0.05
    assert stored.provenance["settings"]["grad_clip"] == 1.0
    rows = stored.provenance["history"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r[c]) for r in rows for c in ("train_loss", "train_bpp", "test_mse"))
    assert stored.model.tables is not None and stored.model.config.cae.channels == (4, 4)
