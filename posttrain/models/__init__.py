"""Building and loading policies: tiny models from a config, any Hugging Face model directory
(also GGUF), the task tokenizer, a value head, a frozen reference copy, and the lecture's
non-autoregressive sorting model."""

from __future__ import annotations

from posttrain.models.loading import (
    CACHE_ENV,
    SMOLLM2_ALIAS,
    cache_root,
    find_smollm2_gguf,
    load_model,
    save_pretrained_pair,
)
from posttrain.models.reference import check_frozen, frozen_copy, is_frozen, parameter_digest
from posttrain.models.sorting_model import (
    SortingModel,
    SortingModelConfig,
    SortingModelOutput,
    build_sorting_model,
)
from posttrain.models.tiny import TINY_SIZES, build_tiny_model, count_parameters
from posttrain.models.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TASK_ALPHABET,
    UNK_ID,
    build_task_tokenizer,
)
from posttrain.models.value_head import ValueHead

__all__ = [
    "BOS_ID",
    "CACHE_ENV",
    "EOS_ID",
    "PAD_ID",
    "SMOLLM2_ALIAS",
    "TASK_ALPHABET",
    "TINY_SIZES",
    "UNK_ID",
    "SortingModel",
    "SortingModelConfig",
    "SortingModelOutput",
    "ValueHead",
    "build_sorting_model",
    "build_task_tokenizer",
    "build_tiny_model",
    "cache_root",
    "check_frozen",
    "count_parameters",
    "find_smollm2_gguf",
    "frozen_copy",
    "is_frozen",
    "load_model",
    "parameter_digest",
    "save_pretrained_pair",
]
