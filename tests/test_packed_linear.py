"""oneDNN-packed linear layers against ``nn.Linear``: values, gradients, and the repack contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.training.packed_linear import PackedLinear, pack_linears, repack, supported
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample
from tests.test_policy import make_config

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _pair(bias: bool, forward_only: bool = False) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(96, 160, bias=bias)
    packed = copy.deepcopy(plain)
    pack_linears(nn.Sequential(packed), rows=32, forward_only=packed if forward_only else None)
    return plain, packed


@pytest.mark.parametrize("forward_only", [False, True], ids=["both-packed", "forward-only"])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_nn_linear(bias, forward_only):
    plain, packed = _pair(bias, forward_only)
    assert isinstance(packed, PackedLinear)
    assert (packed.packed_transposed is None) == forward_only
    x = torch.randn(3, 11, 96, requires_grad=True)
    x_copy = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(3, 11, 160)
    (plain(x) * upstream).sum().backward()
    out = packed(x_copy)
    (out * upstream).sum().backward()
    torch.testing.assert_close(out, plain(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_copy.grad, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(packed.bias.grad, plain.bias.grad, atol=1e-4, rtol=1e-5)


def test_narrow_layers_stay_plain_and_state_dicts_keep_their_keys():
    model = nn.Sequential(nn.Linear(96, 96), nn.Linear(96, 8), nn.Linear(8, 96), nn.Linear(96, 96))
    keys = list(model.state_dict())
    packed = pack_linears(model, rows=16, forward_only=model[3])
    assert packed == [model[0], model[3]]
    assert [type(m) for m in model] == [PackedLinear, nn.Linear, nn.Linear, PackedLinear]
    assert model[0].packed_transposed is not None and model[3].packed_transposed is None
    assert list(model.state_dict()) == keys


def test_an_in_place_update_needs_a_repack():
    """Fused AdamW changes weights without bumping their version: the packed copy is a snapshot."""
    _, layer = _pair(bias=True)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    x = torch.randn(5, 96)
    layer(x).square().sum().backward()
    optimizer.step()
    fresh = F.linear(x, layer.weight, layer.bias)
    assert not torch.allclose(layer(x), fresh, atol=1e-3)
    repack([layer])
    torch.testing.assert_close(layer(x), fresh, atol=1e-5, rtol=1e-5)


def test_frozen_layers_are_not_repacked():
    _, layer = _pair(bias=False)
    layer.weight.requires_grad_(False)
    before = layer.packed
    repack([layer])
    assert layer.packed is before


@pytest.fixture(scope="module")
def folder():
    return resolve_model(TINY_RANDOM_LLAMA)


def test_the_trainer_packs_its_linears_and_repacks_after_each_step(folder):
    config = make_config(lr=1e-2)
    trainer = PolicyTrainer(config, folder, device="cpu")
    layers = [m for m in trainer.model.modules() if isinstance(m, PackedLinear)]
    assert supported(trainer.model) and layers
    head = trainer.model.get_output_embeddings()
    assert head in layers and head.packed_transposed is None  # the lm_head: forward GEMM only
    samples = [TrainSample([1, 5, 9, 13, 2], [0, 0, 1, 1, 1], [0.0, 0.0, -1.0, -1.0, -1.0], sign, f"t#{k}")
               for k, sign in enumerate((1.0, -1.0))]
    before = layers[0].weight.detach().clone()
    trainer.train_step(samples)
    assert not torch.equal(layers[0].weight, before)
    for layer in layers:
        x = torch.randn(4, layer.in_features)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
