"""The one training loop with its objectives, loop settings and divergence guard."""

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph
from safetensors.torch import load_file
from torch import nn

from microcae.cli.cmd_train import command as train_command
from microcae.data.dataset import PreparedSet
from microcae.models.cae import CAE, CAEConfig
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
from microcae.models.rdcae import RDCAE, RDConfig
from microcae.models.registry import read_model_file
from microcae.training.architectures import ARCHITECTURES
from microcae.training.loop import train, train_step
from microcae.training.objectives import MSEObjective, Objective, RateDistortionObjective
from microcae.training.settings import TrainSettings, epoch_lr
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import to_channels_last

TINY = partial(CAE, CAEConfig(channels=(4, 4)))
TINY_RD = partial(RDCAE, RDConfig(CAEConfig(channels=(4, 4))))


@pytest.fixture(scope="module")
def data():
    """Ten 32×32 synthetic tiles: 8 for training, 2 for testing."""
    tiles = np.stack([synthetic_micrograph(32, 32, seed=s) for s in range(10)])
    manifest = {"tiles": [{"index": i, "split": "test" if i >= 8 else "train"}
                          for i in range(10)]}
    return PreparedSet(Path("synthetic"), (tiles / np.float32(255)).astype(np.float32),
                       manifest, "0" * 64)


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def _untimed(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "tiles_per_second")}
            for row in history]


def test_the_mse_objective_is_the_plain_adam_loop_of_the_study_bit_for_bit(data, tmp_path):
    settings = TrainSettings(epochs=3, batch_size=3, lr=2e-3, seed=4)
    result = train(data, tmp_path / "m.safetensors", settings, build_model=TINY, progress=False)

    torch.manual_seed(4)
    model = to_channels_last(TINY())
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    train_idx = data.indices("train")
    means = []
    for epoch in range(3):
        order = train_idx[np.random.default_rng([4, epoch]).permutation(len(train_idx))]
        total = 0.0
        for start in range(0, len(order), 3):
            chosen = np.sort(order[start : start + 3])
            x = torch.from_numpy(data.tiles[chosen])[:, None].contiguous(
                memory_format=torch.channels_last)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x)["x_hat"], x)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(chosen)
        means.append(total / len(order))
    _same_weights(result.model.state_dict(), model.state_dict())
    assert [row["train_mse"] for row in result.history] == means
    assert [row["lr"] for row in result.history] == [2e-3] * 3


def test_the_rate_distortion_loss_is_weighted_mse_plus_the_estimated_bits(data):
    torch.manual_seed(0)
    model = TINY_RD().eval()  # eval mode: rounded latents, no noise, so the loss is exact
    x = torch.from_numpy(data.tiles[:4])[:, None]
    loss, logs = RateDistortionObjective(lmbda=0.02).loss(model, x)
    with torch.no_grad():
        rounded = torch.round(model.encoder(x))
        mse = ((model.decoder(rounded) - x) ** 2).double().mean()
        bits = -torch.log2(model.prior.likelihood(rounded).double()).sum()
    bpp = float(bits) / (4 * 32 * 32)
    assert float(logs["mse"]) == pytest.approx(float(mse), rel=1e-5)
    assert float(logs["bpp"]) == pytest.approx(bpp, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.02 * 255**2 * float(mse) + bpp, rel=1e-5)
    assert float(logs["loss"]) == float(loss.detach())


@pytest.mark.parametrize("objective", [MSEObjective(), RateDistortionObjective(0.01)])
def test_evaluation_in_batches_equals_the_mean_of_single_tiles(data, objective):
    torch.manual_seed(1)
    model = TINY() if isinstance(objective, MSEObjective) else TINY_RD()
    indices = np.arange(10)
    together = objective.evaluate(model, data.tiles, indices)
    alone = [objective.evaluate(model, data.tiles, indices[i : i + 1]) for i in indices]
    assert set(together) == set(objective.evaluated)
    for name, value in together.items():
        assert value == pytest.approx(np.mean([a[name] for a in alone]), rel=1e-5)
    assert all(math.isnan(v) for v in objective.evaluate(model, data.tiles, indices[:0]).values())
    assert model.training  # the mode is restored


def test_a_rate_distortion_run_resumes_bit_for_bit_and_keeps_the_dropped_rate(data, tmp_path):
    rd = ARCHITECTURES["rd-study"].with_channels((4, 4))
    settings = rd.settings(epochs=3, batch_size=4, lr=3e-3, lr_drop=0.5)
    run = partial(train, data, settings=settings, build_model=rd.build,
                  objective=rd.objective(0.01), progress=False)
    reference = run(tmp_path / "ref.safetensors")
    assert [row["lr"] for row in reference.history] == [3e-3, 3e-3, 3e-3 * 0.1]

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run.safetensors", on_epoch=stop_after_first_epoch)
    resumed = run(tmp_path / "run.safetensors", resume=True)
    _same_weights(reference.model.state_dict(), resumed.model.state_dict())
    assert _untimed(resumed.history) == _untimed(reference.history)
    np.testing.assert_array_equal(resumed.model.tables.freqs, reference.model.tables.freqs)
    stored = read_model_file(tmp_path / "run.safetensors")
    assert stored.provenance["settings"]["objective"] == "rate-distortion"
    assert stored.provenance["model"]["kind"] == "microcae.rdcae"
    assert set(stored.provenance["final_eval"]) == {"train_mse", "train_bpp", "test_mse",
                                                    "test_bpp"}


def test_the_learning_rate_drops_tenfold_after_its_share_of_epochs_or_time():
    by_epochs = TrainSettings(epochs=10, lr=1e-3, lr_drop=0.8)
    assert [epoch_lr(by_epochs, e, 0.0, False) for e in range(10)] == [1e-3] * 8 + [1e-4] * 2
    by_time = TrainSettings(epochs=1000, lr=1e-3, lr_drop=0.5, max_seconds=100.0)
    assert epoch_lr(by_time, 3, 49.9, False) == 1e-3
    assert epoch_lr(by_time, 3, 50.0, False) == 1e-3 * 0.1
    assert epoch_lr(by_time, 3, 0.0, True) == 1e-3 * 0.1  # once dropped, it stays dropped
    never = TrainSettings(epochs=10, lr=1e-3)
    assert {epoch_lr(never, e, 1e9, False) for e in range(10)} == {1e-3}


def test_gradient_clipping_limits_the_step_and_a_zero_weight_changes_nothing(data):
    x = torch.from_numpy(data.tiles[:4])[:, None]
    torch.manual_seed(2)
    model = TINY()
    nn.functional.mse_loss(model(x)["x_hat"], x).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    clip = 0.25 * float(grad.norm())
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    train_step(model, sgd, MSEObjective(), x, grad_clip=clip)
    step = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    torch.testing.assert_close(step, -grad * (clip / float(grad.norm())), rtol=1e-4, atol=1e-7)

    moved = torch.cat([p.detach().flatten() for p in model.parameters()])
    train_step(model, sgd, MSEObjective(), x, weight=0.0)
    assert torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), moved)


def test_max_seconds_stops_after_the_epoch_that_passes_it(data, tmp_path):
    settings = TrainSettings(epochs=5, batch_size=4, max_seconds=1e-6)
    result = train(data, tmp_path / "m.safetensors", settings, build_model=TINY, progress=False)
    assert [row["epoch"] for row in result.history] == [1]
    longer = TrainSettings(epochs=2, batch_size=4)
    again = train(data, tmp_path / "m.safetensors", longer, build_model=TINY, progress=False,
                  resume=True, overwrite=True)
    assert [row["epoch"] for row in again.history] == [1, 2]


class Sabotaged(Objective):
    """The study's MSE, made non-finite after ``after`` steps: in the loss or the gradient."""

    logged = ("mse",)
    evaluated = ("mse",)

    def __init__(self, after, gradient):
        self.after, self.gradient, self.steps = after, gradient, 0

    def loss(self, model, batch):
        loss, logs = MSEObjective().loss(model, batch)
        self.steps += 1
        if self.steps > self.after and self.gradient:  # finite value, NaN gradient
            zero = 0 * sum(p.sum() for p in model.parameters())
            loss = loss + torch.sqrt(zero)
        elif self.steps > self.after:
            loss = loss * math.inf
        return loss, logs

    def evaluate(self, model, tiles, indices):
        return MSEObjective().evaluate(model, tiles, indices)

    def describe(self):
        return {"objective": "sabotaged"}


@pytest.mark.parametrize(("gradient", "symptom"), [(False, "the loss became inf"),
                                                   (True, "the weights became non-finite")])
def test_divergence_stops_the_run_keeping_the_last_finite_checkpoint(data, tmp_path, gradient,
                                                                     symptom):
    settings = TrainSettings(epochs=3, batch_size=8, seed=5)  # one step per epoch
    first = train(data, tmp_path / "ref.safetensors", TrainSettings(epochs=1, batch_size=8,
                                                                    seed=5),
                  build_model=TINY, progress=False)
    out = tmp_path / "m.safetensors"
    with pytest.raises(MicrocaeError, match=f"diverged in epoch 2 \\({symptom}") as caught:
        train(data, out, settings, build_model=TINY, objective=Sabotaged(1, gradient),
              progress=False)
    assert "keeps epoch 1" in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists() and not (tmp_path / "m.train.csv").exists()
    kept = load_file(str(tmp_path / "m.checkpoint.safetensors"))
    _same_weights({k[6:]: v for k, v in kept.items() if k.startswith("model.")},
                  first.model.state_dict())


def test_objectives_refuse_models_of_another_kind_before_writing(data, tmp_path):
    out = tmp_path / "m.safetensors"
    with pytest.raises(MicrocaeError, match="MSE objective needs"):
        train(data, out, TrainSettings(epochs=1), build_model=TINY_RD, progress=False)
    with pytest.raises(MicrocaeError, match="rate–distortion objective needs"):
        train(data, out, TrainSettings(epochs=1), build_model=TINY,
              objective=RateDistortionObjective(), progress=False)
    with pytest.raises(MicrocaeError, match="not a microcae model kind"):
        train(data, out, TrainSettings(epochs=1), build_model=lambda: nn.Conv2d(1, 1, 3),
              progress=False)
    assert not any(tmp_path.iterdir())


def test_init_fine_tunes_another_models_weights_and_records_where_they_came_from(data, tmp_path):
    codec = partial(HyperpriorCodec, HyperpriorConfig(N=4, M=4))
    run = partial(train, data, build_model=codec, progress=False)
    base = run(tmp_path / "base.safetensors", TrainSettings(epochs=1, batch_size=4, lr=1e-2),
               objective=RateDistortionObjective(0.01))
    # A learning rate of 1e-12 keeps the weights where --init put them (Adam moves each
    # weight by about lr per step); a fresh start from seed 1 would be far from them.
    tuned_settings = TrainSettings(epochs=1, batch_size=4, lr=1e-12, seed=1)
    tuned = run(tmp_path / "tuned.safetensors", tuned_settings,
                objective=RateDistortionObjective(0.05), init=tmp_path / "base.safetensors")
    fresh = run(tmp_path / "fresh.safetensors", tuned_settings,
                objective=RateDistortionObjective(0.05))
    base_state, tuned_state = base.model.state_dict(), tuned.model.state_dict()
    for key, value in base_state.items():
        torch.testing.assert_close(tuned_state[key], value, rtol=0, atol=1e-9)
    assert max(float((fresh.model.state_dict()[k] - v).abs().max())
               for k, v in base_state.items()) > 1e-2
    init = read_model_file(tmp_path / "tuned.safetensors").provenance["init"]
    assert init == {"path": str(tmp_path / "base.safetensors"), "epochs": 1,
                    "fingerprint": base.model.fingerprint(("encoder.", "decoder.")),
                    "seconds": round(base.history[0]["seconds"], 1)}
    with pytest.raises(MicrocaeError, match="same kind and configuration"):
        train(data, tmp_path / "other.safetensors", TrainSettings(epochs=1), build_model=TINY,
              init=tmp_path / "base.safetensors", progress=False)
    assert not (tmp_path / "other.safetensors").exists()


@pytest.mark.parametrize("bad", [{"lr": math.inf}, {"lr": math.nan}, {"lr": 0.0},
                                 {"epochs": 0}, {"lr_drop": 1.5}, {"grad_clip": -1.0},
                                 {"max_seconds": math.nan}, {"seed": -1}])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(MicrocaeError, match=f"setting {next(iter(bad))} "):
        TrainSettings(**bad)


def test_lambda_must_be_finite_and_positive():
    for lmbda in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(MicrocaeError, match="lmbda"):
            RateDistortionObjective(lmbda)


def test_the_architecture_registry_is_the_command_lines_choice():
    arch = next(p for p in train_command.params if p.name == "arch")
    assert list(arch.type.choices) == list(ARCHITECTURES) == ["study", "rd-study", "rd-wide",
                                                              "codec"]
    assert isinstance(ARCHITECTURES["study"].objective(), MSEObjective)
    with pytest.raises(MicrocaeError, match="coding architectures only"):
        ARCHITECTURES["study"].objective(0.1)
    wide = ARCHITECTURES["rd-wide"]
    assert wide.objective() == RateDistortionObjective(0.01)
    assert wide.objective(0.2) == RateDistortionObjective(0.2)
    settings = wide.settings(epochs=3)
    assert (settings.grad_clip, settings.lr_drop, settings.epochs) == (1.0, 0.8, 3)
    model = wide.build()
    assert isinstance(model, RDCAE) and model.config.cae.channels == (64, 64, 64, 32)
    assert ARCHITECTURES["study"].settings() == TrainSettings()
    with pytest.raises(ValueError, match="channels"):
        ARCHITECTURES["study"].with_channels((0, 4))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_training_step_and_evaluation_stay_on_the_models_device(arch):
    # "meta" stands in for a GPU on a CPU-only machine: a tensor made on the CPU inside a model
    # or objective (a constant without device=) fails there as it would with --device cuda
    architecture = ARCHITECTURES[arch]
    model = architecture.build().train().to("meta")
    batch = torch.rand(2, 1, 128, 128, device="meta")
    loss, logged = architecture.objective().loss(model, batch)
    loss.backward()
    assert loss.device.type == "meta" and all(v.device.type == "meta" for v in logged.values())
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())
    output = model.eval()(batch)
    reconstruction = output["x_hat"] if isinstance(output, dict) else output
    assert reconstruction.device.type == "meta" and reconstruction.shape == batch.shape
