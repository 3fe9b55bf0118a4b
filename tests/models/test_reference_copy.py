"""The frozen reference copy (CORR-9) and the parameter digest."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from posttrain.models.reference import check_frozen, frozen_copy, is_frozen, parameter_digest
from posttrain.models.tiny import build_tiny_model


def _small_model() -> nn.Module:
    return build_tiny_model("tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64)


def test_copy_is_frozen_everywhere():
    model = _small_model().train()
    ref = frozen_copy(model)
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(not m.training for m in ref.modules())
    assert is_frozen(ref) and not is_frozen(model)
    check_frozen(ref)
    assert all(p.requires_grad for p in model.parameters())  # the original is untouched
    assert model.training


def test_train_on_the_copy_or_a_parent_keeps_eval():
    ref = frozen_copy(_small_model())
    ref.train()
    assert not ref.training
    parent = nn.ModuleDict({"policy": _small_model(), "ref": ref})
    parent.train()
    assert parent.training and parent["policy"].training
    assert all(not m.training for m in ref.modules())
    ref.model.layers[0].train()  # a submodule directly
    assert not ref.model.layers[0].training
    check_frozen(ref)


def test_digest_unchanged_after_an_optimizer_step_on_the_original():
    model = _small_model()
    ref = frozen_copy(model)
    before = parameter_digest(ref)
    assert before == parameter_digest(model)  # bitwise equal at the start
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    input_ids = torch.randint(0, 80, (2, 6), generator=torch.Generator().manual_seed(0))
    model(input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    assert parameter_digest(model) != before  # the original moved ...
    assert parameter_digest(ref) == before  # ... the reference did not
    # The two share no storage.
    ref_ptrs = {p.data_ptr() for p in ref.parameters()}
    assert ref_ptrs.isdisjoint({p.data_ptr() for p in model.parameters()})


def test_reference_gives_no_gradient():
    ref = frozen_copy(_small_model())
    logits = ref(torch.tensor([[1, 5, 6]])).logits
    assert not logits.requires_grad


def test_check_frozen_names_the_offender():
    ref = frozen_copy(_small_model())
    ref.model.norm.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="model.norm.weight"):
        check_frozen(ref)


def test_deepcopy_of_a_frozen_copy_stays_frozen():
    ref = copy.deepcopy(frozen_copy(_small_model()))
    ref.train()
    assert all(not m.training for m in ref.modules())


def test_digest_covers_names_values_and_dtype():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.0)
    digest = parameter_digest(model)
    assert len(digest) == 64 and digest == parameter_digest(copy.deepcopy(model))
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        # The smallest change: one ulp on one element.
        flipped.weight[0, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert parameter_digest(flipped) != digest
    assert parameter_digest(copy.deepcopy(model).to(torch.bfloat16)) != digest
    renamed = nn.Sequential(copy.deepcopy(model))  # same bytes, names "0.weight", "0.bias"
    assert parameter_digest(renamed) != digest
