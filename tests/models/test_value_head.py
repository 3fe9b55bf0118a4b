"""The scalar value head: shapes, zero init, gradients, safetensors round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from posttrain.models.value_head import ValueHead


def test_shape_and_zero_init():
    head = ValueHead(8)
    hidden = torch.randn(2, 5, 8)
    values = head(hidden)
    assert values.shape == (2, 5)
    assert torch.equal(values, torch.zeros(2, 5))


def test_value_is_linear_in_hidden():
    head = ValueHead(3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.proj.bias.fill_(0.25)
    hidden = torch.tensor([[[2.0, 1.0, 4.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    # 1·2 − 2·1 + 0.5·4 + 0.25 = 2.25 ; all-zero state -> the bias 0.25
    assert torch.equal(head(hidden), torch.tensor([[2.25, 0.25]]))


def test_gradient_reaches_head_and_then_the_trunk():
    head = ValueHead(4)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    head(hidden).sum().backward()
    # loss = Σ_bt (w·h_bt + b): ∂/∂w = Σ_bt h_bt, ∂/∂b = B·T = 6, ∂/∂h = w = 0 at init.
    assert torch.allclose(head.proj.weight.grad, hidden.detach().sum(dim=(0, 1))[None], atol=1e-6)
    assert head.proj.bias.grad.item() == 6.0
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    # Once the weight is non-zero the gradient flows into the hidden state: ∂/∂h_bt = w.
    with torch.no_grad():
        head.proj.weight.fill_(0.5)
    hidden.grad = None
    head(hidden).sum().backward()
    assert torch.equal(hidden.grad, torch.full_like(hidden, 0.5))


def test_bf16_hidden_is_computed_in_the_head_dtype():
    head = ValueHead(2)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 1.0]]))
    values = head(torch.ones(1, 1, 2, dtype=torch.bfloat16))
    assert values.dtype == torch.float32 and values.item() == 2.0


def test_wrong_hidden_size_names_it():
    with pytest.raises(ValueError, match="hidden_size=4"):
        ValueHead(4)(torch.zeros(1, 1, 5))


def test_safetensors_round_trip(tmp_path):
    head = ValueHead(6, zero_init=False)
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    other = ValueHead(6)
    other.load_state_dict(load_file(tmp_path / "head.safetensors"), strict=True)
    hidden = torch.randn(2, 2, 6)
    assert torch.equal(other(hidden), head(hidden))
