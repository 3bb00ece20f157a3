"""The fused RMSNorm against transformers' own modules: values, both gradients, what is left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from reinflow.training.fused_rms_norm import fuse_rms_norms
from reinflow.config.models import TINY_RANDOM_LLAMA, resolve_model
from reinflow.training.policy import PolicyTrainer
from tests.test_policy import make_config


@pytest.mark.parametrize("norm_class", [LlamaRMSNorm, Qwen2RMSNorm])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_and_gradients_equal_the_transformers_norm(norm_class, seed):
    torch.manual_seed(seed)
    plain = norm_class(96, eps=1e-5)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
    fused = copy.deepcopy(plain)
    assert fuse_rms_norms(nn.Sequential(fused)) == 1
    assert isinstance(fused, norm_class) and type(fused) is not norm_class
    x = (torch.randn(3, 17, 96) * torch.rand(3, 17, 1) * 4).requires_grad_(True)
    x_copy = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(3, 17, 96)
    want = plain(x)
    (want * upstream).sum().backward()
    got = fused(x_copy)
    (got * upstream).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_copy.grad, x.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-4)


def test_a_frozen_weight_gets_no_gradient_and_the_input_still_does():
    norm = LlamaRMSNorm(32)
    norm.weight.requires_grad_(False)
    reference = copy.deepcopy(norm)
    fuse_rms_norms(norm)
    x = torch.randn(5, 32, requires_grad=True)
    norm(x).sum().backward()
    assert norm.weight.grad is None
    x_ref = x.detach().clone().requires_grad_(True)
    reference(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)


def test_other_norms_and_dtypes_are_left_alone_and_state_dicts_keep_their_keys():
    class GemmaLikeRMSNorm(LlamaRMSNorm):  # another class name: another formula, never fused
        pass

    model = nn.Sequential(LlamaRMSNorm(8), GemmaLikeRMSNorm(8), nn.LayerNorm(8), LlamaRMSNorm(8).bfloat16())
    keys = list(model.state_dict())
    assert fuse_rms_norms(model) == 1
    assert [type(m).__name__ for m in model] == ["FusedLlamaRMSNorm", "GemmaLikeRMSNorm", "LayerNorm", "LlamaRMSNorm"]
    assert list(model.state_dict()) == keys
    half = torch.randn(2, 8, dtype=torch.bfloat16)
    fused = model[0].bfloat16()  # a fused module given another dtype falls back to transformers' forward
    assert torch.equal(fused(half), LlamaRMSNorm.forward(fused, half))


def test_the_trainer_fuses_the_models_norms():
    trainer = PolicyTrainer(make_config(), resolve_model(TINY_RANDOM_LLAMA), device="cpu")
    names = {type(m).__name__ for m in trainer.model.modules() if "RMSNorm" in type(m).__name__}
    assert names == {"FusedLlamaRMSNorm"}
