"""The method registry: records, queries, the study's name, controls; the layer table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import zoo_encoder
from torch import nn

from microcae.metrics.faithfulness import random_order_map
from microcae.metrics.microstructure import sobel_map
from microcae.models.cae import CAE, CAEConfig
from microcae.models.gdn import GDN
from microcae.saliency import METHODS, registry, relevance
from microcae.saliency.baselines import lrp_conservation
from microcae.saliency.layers import LAYERS, layer_kind, leaves
from microcae.util.errors import MicrocaeError

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")


def test_the_study_method_is_the_fastest_exact_engine_and_the_default():
    torch.manual_seed(0)
    encoder = CAE(CAEConfig(channels=(4, 4))).encoder.double().eval()
    x = torch.rand(2, 1, 16, 24, dtype=torch.float64)
    assert registry.fastest_exact() == "vjp" == registry.names("engine", exact=True)[0]
    by_engine = relevance(encoder, x, "vjp")
    assert torch.equal(relevance(encoder, x), by_engine)
    assert torch.equal(relevance(encoder, x, registry.STUDY_METHOD), by_engine)
    for engine in registry.names("engine", exact=True):
        if engine not in ("complex-step-naive", "patches"):  # patches: no max-pools
            torch.testing.assert_close(relevance(encoder, x, engine), by_engine, rtol=1e-12,
                                       atol=0)


def test_queries_filter_by_role_and_properties_in_preference_order():
    assert registry.names("engine", exact=True) == ("vjp", "complex-step-coloured", "jvp",
                                                   "complex-step-naive", "patches")
    assert registry.names(study=True) == ("complex-step", "gbp", "lrp-w2", "lrp-zbeta")
    assert registry.names("baseline") == ("gbp", "lrp-w2", "lrp-zbeta", "gradient",
                                          "integrated-gradients")
    assert registry.names("control") == ("sobel-edges", "random")
    assert set(registry.names(local=True)) == set(registry.names(exact=True))
    assert sorted(registry.names()) == sorted(METHODS)
    assert [registry.title(m) for m in registry.names(study=True)] == [
        "complex-step", "GBP", "LRP-w²", "LRP-β"]
    assert registry.title("not-registered") == "not-registered"


def test_only_lrp_records_carry_a_conservation_check():
    checks = {name: record.conservation for name, record in METHODS.items()
              if record.conservation is not None}
    assert checks == {"lrp-w2": lrp_conservation, "lrp-zbeta": lrp_conservation}


def test_registering_twice_is_refused_and_unknown_names_fail_in_one_line():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("vjp", "vjp", "engine")(lambda encoder, x: x[:, 0])
    with pytest.raises(MicrocaeError, match="unknown relevance method 'nope'; choose from"):
        registry.lookup("nope")


def test_other_packages_read_their_method_lists_from_the_registry():
    from microcae.evaluation import comparison
    from microcae.evaluation.reproduction import claims
    from microcae.pipelines.batch.jobs import default_saliency_method

    assert comparison.EXACT_ENGINES == registry.names("engine", exact=True)
    assert comparison.CONTROLS == registry.names("control")
    assert comparison.FIGURE_METHODS == registry.names(study=True)
    assert comparison.PREFERRED_METHODS == ("complex-step", *registry.names("baseline"))
    assert claims.BASELINES == ("gbp", "lrp-w2", "lrp-zbeta")
    assert default_saliency_method() == registry.fastest_exact()
    assert default_saliency_method(CAE().encoder, 64) == "vjp"  # max-pools: no patches


def test_relevance_sets_up_the_allocator_like_the_cli(monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "configure_allocator", lambda: calls.append(1) or True)
    relevance(CAE(CAEConfig(channels=(4,))).encoder.eval(), torch.rand(1, 1, 8, 8), "vjp")
    assert calls == [1]


def test_controls_are_the_sobel_map_and_seeded_noise():
    x = torch.rand(3, 1, 12, 10, generator=torch.Generator().manual_seed(0))
    edges = relevance(nn.Identity(), x, "sobel-edges")
    np.testing.assert_array_equal(edges[1].numpy(), sobel_map(x[1, 0].double().numpy()))
    noise = relevance(nn.Identity(), x, "random", seed=4)
    assert torch.equal(noise, random_order_map((3, 12, 10), 4))
    assert not torch.equal(noise, relevance(nn.Identity(), x, "random", seed=5))


def test_every_layer_type_has_one_kind_and_the_zoo_uses_each_kind():
    types = [t for kind in LAYERS for t in kind.types]
    assert len(types) == len(set(types))
    used = {type(layer) for _, layer in leaves(zoo_encoder())}
    used |= {nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.ReLU}  # the global-head encoder
    used |= {GDN}  # the codec's encoder (tests/test_saliency_codec.py)
    assert used == set(types)
    assert layer_kind(nn.Linear(2, 2)).reach is None  # mixes all positions
    assert layer_kind(nn.MaxPool2d(2)).kinks is not None
    assert layer_kind(nn.Tanh()).kinks is None


@pytest.mark.parametrize(("layer", "message"), [
    (nn.GELU(), r"layer 'encoder' \(GELU\) has no complex twin; supported: AdaptiveAvgPool2d"),
    (nn.ReLU(inplace=True), r"layer 'encoder' \(ReLU\): in-place activations"),
    (nn.MaxPool2d(2, return_indices=True), "return_indices=True is not supported"),
    (nn.Dropout(0.1), r"layer 'encoder' \(Dropout\) is in training mode"),
])
def test_layer_checks_name_the_layer(layer, message):
    with pytest.raises(MicrocaeError, match=message):
        layer_kind(layer)
