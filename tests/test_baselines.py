"""Baseline relevance methods against float64 textbook replicas on a tiny two-layer encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from microcae.models.cae import CAE
from microcae.saliency import METHODS, relevance
from microcae.saliency.baselines import LRP_STABILIZER, lrp_conservation

BASELINES = ("gbp", "gradient", "integrated-gradients", "lrp-w2", "lrp-zbeta")


def tiny_encoder(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ).double()
    with torch.no_grad():
        for module in encoder:
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, 0.6)
                module.bias.uniform_(-0.05, 0.1)
    return encoder


# ---- float64 textbook replica: explicit loops, no torch ----------------------------------------

def conv(a: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    channels, height, width = a.shape
    padded = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], height, width))
    for k in range(w.shape[0]):
        for i in range(height):
            for j in range(width):
                out[k, i, j] = b[k] + np.sum(w[k] * padded[:, i : i + 3, j : j + 3])
    return out


def pool(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2×2 max-pool; also the (C, H/2, W/2, 2) index of each window's winner."""
    channels, height, width = a.shape
    out = np.zeros((channels, height // 2, width // 2))
    winner = np.zeros((channels, height // 2, width // 2, 2), dtype=int)
    for c in range(channels):
        for i in range(height // 2):
            for j in range(width // 2):
                window = a[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                u, v = np.unravel_index(np.argmax(window), (2, 2))
                out[c, i, j] = window[u, v]
                winner[c, i, j] = (2 * i + u, 2 * j + v)
    return out, winner


def unpool(r: np.ndarray, winner: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape)
    for c, i, j in np.ndindex(r.shape):
        out[c, winner[c, i, j, 0], winner[c, i, j, 1]] += r[c, i, j]
    return out


def forward(encoder: nn.Sequential, image: np.ndarray) -> dict[str, np.ndarray]:
    w1, b1 = encoder[0].weight.detach().numpy(), encoder[0].bias.detach().numpy()
    w2, b2 = encoder[3].weight.detach().numpy(), encoder[3].bias.detach().numpy()
    s = {"x": image[None], "w1": w1, "w2": w2}
    s["z1"] = conv(s["x"], w1, b1)
    s["a1"], s["win1"] = pool(np.maximum(s["z1"], 0))
    s["z2"] = conv(s["a1"], w2, b2)
    s["f"], s["win2"] = pool(np.maximum(s["z2"], 0))
    return s


def stabilise(d: float) -> float:
    return d + LRP_STABILIZER * (np.sign(d) + (d == 0))


def lrp_conv(a: np.ndarray, w: np.ndarray, r_out: np.ndarray, rule: str) -> np.ndarray:
    """Redistribute r_out of a 3×3 'same' convolution over its in-image inputs by ``rule``."""
    channels, height, width = a.shape
    r_in = np.zeros_like(a)
    for k, i, j in np.ndindex(r_out.shape):
        terms = {}
        for c in range(channels):
            for u in range(3):
                for v in range(3):
                    p, q = i + u - 1, j + v - 1
                    if 0 <= p < height and 0 <= q < width:
                        weight, act = w[k, c, u, v], a[c, p, q]
                        if rule == "z+":
                            z = max(act, 0) * max(weight, 0) + min(act, 0) * min(weight, 0)
                        elif rule == "w2":
                            z = weight**2
                        else:  # z^beta with bounds low = 0, high = 1
                            z = act * weight - 0.0 * max(weight, 0) - 1.0 * min(weight, 0)
                        terms[c, p, q] = z
        denominator = stabilise(sum(terms.values()))
        for position, z in terms.items():
            r_in[position] += z / denominator * r_out[k, i, j]
    return r_in


def lrp_reference(encoder: nn.Sequential, image: np.ndarray, first_rule: str) -> np.ndarray:
    s = forward(encoder, image)
    relevance_latent = s["f"]  # seeded with the latent itself
    r = unpool(relevance_latent, s["win2"], s["z2"].shape)  # ReLU passes relevance
    r = lrp_conv(s["a1"], s["w2"], r, "z+")
    r = unpool(r, s["win1"], s["z1"].shape)
    return lrp_conv(s["x"], s["w1"], r, first_rule)[0]


def conv_transpose(g: np.ndarray, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    _, height, width = shape
    out = np.zeros(shape)
    for k, i, j in np.ndindex(g.shape):
        for c in range(shape[0]):
            for u in range(3):
                for v in range(3):
                    p, q = i + u - 1, j + v - 1
                    if 0 <= p < height and 0 <= q < width:
                        out[c, p, q] += w[k, c, u, v] * g[k, i, j]
    return out


def backprop_reference(encoder: nn.Sequential, image: np.ndarray, guided: bool) -> np.ndarray:
    """d||f||/dx; with ``guided`` every ReLU also drops negative incoming gradients."""
    s = forward(encoder, image)

    def through_relu(g: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (np.maximum(g, 0) if guided else g) * (z > 0)

    g = s["f"] / np.linalg.norm(s["f"])
    g = through_relu(unpool(g, s["win2"], s["z2"].shape), s["z2"])
    g = conv_transpose(g, s["w2"], s["a1"].shape)
    g = through_relu(unpool(g, s["win1"], s["z1"].shape), s["z1"])
    return conv_transpose(g, s["w1"], s["x"].shape)[0]


# ---- tests --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_all_baselines_registered() -> None:
    assert set(BASELINES) <= set(METHODS)


@pytest.mark.parametrize(("method", "rule"), [("lrp-w2", "w2"), ("lrp-zbeta", "zbeta")])
def test_lrp_matches_textbook_rules(batch: torch.Tensor, method: str, rule: str) -> None:
    encoder = tiny_encoder()
    maps = relevance(encoder, batch, method)
    assert maps.shape == (2, 8, 8) and maps.dtype == torch.float64
    for n in range(2):
        expected = lrp_reference(encoder, batch[n, 0].numpy(), rule)
        np.testing.assert_allclose(maps[n].numpy(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(("method", "guided"), [("gbp", True), ("gradient", False)])
def test_backprop_methods_match_textbook(batch: torch.Tensor, method: str, guided: bool) -> None:
    encoder = tiny_encoder()
    maps = relevance(encoder, batch, method)
    for n in range(2):
        expected = backprop_reference(encoder, batch[n, 0].numpy(), guided)
        if method == "gradient":
            expected = np.abs(expected)
        np.testing.assert_allclose(maps[n].numpy(), expected, rtol=1e-10, atol=1e-14)


def test_gbp_differs_from_gradient_where_a_relu_sees_negative_gradient(batch: torch.Tensor) -> None:
    encoder = tiny_encoder()
    image = batch[0, 0].numpy()
    guided = backprop_reference(encoder, image, guided=True)
    plain = backprop_reference(encoder, image, guided=False)
    assert not np.allclose(guided, plain)  # otherwise the GBP check above proves nothing extra


@pytest.mark.parametrize("method", ["lrp-w2", "lrp-zbeta"])
def test_lrp_conserves_the_latent_sum_on_the_study_architecture(method: str) -> None:
    torch.manual_seed(3)
    encoder = CAE().encoder.double()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    maps = relevance(encoder, x, method)
    ratio = lrp_conservation(encoder, x, maps)
    latent_sum = encoder(x).detach().flatten(1).sum(1)
    np.testing.assert_allclose(maps.flatten(1).sum(1).numpy(), latent_sum.numpy(), rtol=1e-4)
    np.testing.assert_allclose(ratio.numpy(), 1.0, rtol=1e-4)


def test_integrated_gradients_is_complete(batch: torch.Tensor) -> None:
    encoder = tiny_encoder()
    maps = relevance(encoder, batch, "integrated-gradients", n_steps=256)
    with torch.no_grad():
        f = encoder(batch).flatten(1).norm(dim=1) - encoder(0 * batch).flatten(1).norm(dim=1)
    np.testing.assert_allclose(maps.sum((1, 2)).numpy(), f.numpy(), rtol=2e-3)


@pytest.mark.parametrize("method", BASELINES)
def test_model_unchanged_and_hooks_removed(method: str) -> None:
    torch.manual_seed(4)
    encoder = CAE().encoder
    x = torch.rand(2, 1, 32, 32)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        before = encoder(x)
    relevance(encoder, x, method)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    for module in encoder.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks
    assert all(p.grad is None and p.requires_grad for p in encoder.parameters())
    assert not x.requires_grad
    with torch.no_grad():
        assert torch.equal(encoder(x), before)


@pytest.mark.parametrize("method", BASELINES)
def test_batched_equals_one_by_one_and_float32_close_to_float64(method: str) -> None:
    encoder = tiny_encoder()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    together = relevance(encoder, x, method)
    alone = torch.cat([relevance(encoder, x[i : i + 1], method) for i in range(3)])
    np.testing.assert_allclose(together.numpy(), alone.numpy(), rtol=1e-9, atol=1e-13)
    single = relevance(encoder.float(), x.float(), method)
    assert single.dtype == torch.float32
    scale = together.abs().max().item()
    np.testing.assert_allclose(single.double().numpy(), together.numpy(), atol=1e-4 * scale)
