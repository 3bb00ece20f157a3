"""The fused SwiGLU MLP against the same module unfused (packed projections): values and every
gradient equal bit for bit; MLPs it cannot fuse are left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from reinflow.training.fused_mlp import fuse_mlps, fusable
from reinflow.training.packed_linear import pack_linears, supported

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def _mlp(cls, config_cls, hidden_act: str = "silu") -> nn.Module:
    config = config_cls(hidden_size=96, intermediate_size=160, hidden_act=hidden_act)
    mlp = cls(config)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.2)
    return mlp


@pytest.mark.parametrize("cls,config_cls", [(LlamaMLP, LlamaConfig), (Qwen2MLP, Qwen2Config)])
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_gradients_equal_the_unfused_packed_mlp(cls, config_cls, seed):
    plain, fused = [_mlp(cls, config_cls) for _ in range(2)]
    torch.manual_seed(seed)
    with torch.no_grad():
        for p, q in zip(plain.parameters(), fused.parameters()):
            q.copy_(p.normal_(0, 0.2))
    assert supported(plain)
    pack_linears(plain, rows=51)
    pack_linears(fused, rows=51)
    assert fuse_mlps(nn.Sequential(fused)) == 1 and isinstance(fused, cls) and type(fused) is not cls
    x = torch.randn(3, 17, 96).requires_grad_(True)
    x_copy = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(3, 17, 96)
    want = plain(x)
    (want * upstream).sum().backward()
    got = fused(x_copy)
    (got * upstream).sum().backward()
    assert torch.equal(got, want)
    assert torch.equal(x_copy.grad, x.grad)
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(getattr(fused, name).weight.grad, getattr(plain, name).weight.grad), name


def test_frozen_weights_get_no_gradient_and_the_input_still_does():
    torch.manual_seed(3)
    mlp = _mlp(LlamaMLP, LlamaConfig)
    pack_linears(mlp, rows=8)
    fuse_mlps(mlp)
    mlp.requires_grad_(False)
    x = torch.randn(2, 4, 96, requires_grad=True)
    mlp(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in mlp.parameters())


def test_unpacked_other_activation_or_forward_only_mlps_are_left_alone():
    unpacked = _mlp(LlamaMLP, LlamaConfig)
    gelu = _mlp(LlamaMLP, LlamaConfig, hidden_act="gelu")
    pack_linears(gelu, rows=8)
    forward_only = _mlp(LlamaMLP, LlamaConfig)
    pack_linears(forward_only, rows=8, forward_only=forward_only.down_proj)
    for mlp in (unpacked, gelu, forward_only):
        assert not fusable(mlp)
        assert fuse_mlps(mlp) == 0 and type(mlp) is LlamaMLP
