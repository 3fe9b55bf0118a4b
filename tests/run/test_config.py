"""Tests for posttrain.config: typed dataclass configs from YAML recipes and dotted overrides."""

from __future__ import annotations

import enum
import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from posttrain.config import (
    ConfigError,
    config_diff,
    fingerprint,
    from_dict,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
)
from posttrain.config_help import field_docs, format_help

CALLS: list[str] = []
"""Order in which validate() ran (reset by the tests that read it)."""


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    """A sampling-like section."""

    temperature: float = 1.0
    """Softmax temperature; must be > 0."""
    top_k: int | None = None
    """Keep the k most likely tokens
    (None keeps all)."""

    def validate(self) -> None:
        CALLS.append("inner")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")


@dataclass
class Leaf:
    name: str = "leaf"
    """Leaf name."""

    def validate(self) -> None:
        CALLS.append("leaf")


@dataclass
class Outer:
    """A config with every supported field type."""

    steps: int = 10
    """Optimizer steps."""
    lr: float = 1e-3
    """Peak learning rate."""
    flag: bool = False
    """A switch."""
    name: str = "run"
    """Run name."""
    algo: Literal["grpo", "ppo", "rloo"] = "grpo"
    """Preset."""
    seed: Optional[int] = None  # noqa: UP045 -- the typing.Optional spelling is tested on purpose
    """Optional seed."""
    ids: list[int] = field(default_factory=lambda: [1, 2])
    """Token ids."""
    betas: tuple[float, ...] = (0.9, 0.99)
    """Adam betas."""
    pair: tuple[int, str] = (1, "x")
    weights: dict[str, float] = field(default_factory=dict)
    """Per-task weights."""
    color: Color = Color.RED
    """An enum, by value."""
    out: Path = Path("runs")
    """Output directory."""
    inner: Inner = field(default_factory=Inner)
    """Nested section."""
    extra: Leaf | None = None
    """Optional section, off by default."""

    def validate(self) -> None:
        CALLS.append("outer")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")


@dataclass
class Needs:
    model_path: str
    """No default: must be given."""
    depth: int = 2


@dataclass
class Holder:
    needs: Needs
    """A section without a default whose own field is required."""


@dataclass
class Multi:
    key: int | str = 0
    """An int or a string."""
    stages: list[Leaf] = field(default_factory=list)
    """A list of sections."""


@dataclass
class Derived:
    a: int = 1
    b: int = field(init=False, default=0)


FULL = {
    "steps": 3,
    "lr": 1,  # an int for a float field: accepted, converted to 1.0
    "flag": True,
    "name": "exp",
    "algo": "ppo",
    "seed": 7,
    "ids": [4, 5, 6],
    "betas": [0.8, 0.9],
    "pair": [2, "y"],
    "weights": {"a": 0.5, "b": 2},
    "color": "blue",
    "out": "runs/x",
    "inner": {"temperature": 0.5, "top_k": 4},
    "extra": {"name": "z"},
}


def test_missing_keys_take_dataclass_defaults():
    assert from_dict(Outer, {}) == Outer()


def test_every_supported_type_is_converted():
    cfg = from_dict(Outer, FULL)
    assert cfg.steps == 3 and type(cfg.steps) is int
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.flag is True and cfg.name == "exp" and cfg.algo == "ppo" and cfg.seed == 7
    assert cfg.ids == [4, 5, 6]
    assert cfg.betas == (0.8, 0.9) and cfg.pair == (2, "y")
    assert cfg.weights == {"a": 0.5, "b": 2.0} and type(cfg.weights["b"]) is float
    assert cfg.color is Color.BLUE and cfg.out == Path("runs/x")
    assert cfg.inner == Inner(temperature=0.5, top_k=4) and cfg.extra == Leaf("z")
    assert from_dict(Outer, {"seed": None, "extra": None}) == Outer()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"stpes": 3}, "stpes: unknown key; did you mean 'steps'?"),
        (
            {"inner": {"temprature": 2}},
            "inner.temprature: unknown key; did you mean 'temperature'?",
        ),
        ({"zzz": 1}, "zzz: unknown key; valid keys: steps, lr, flag"),
        ({"steps": 2.0}, "steps: expected an int, got float 2.0"),
        ({"steps": True}, "steps: expected an int, got true"),
        ({"steps": "3"}, "steps: expected an int, got str '3'"),
        ({"seed": 1.5}, "seed: expected an int, got float 1.5"),
        ({"lr": "fast"}, "lr: expected a float, got str 'fast'"),
        ({"lr": False}, "lr: expected a float, got false"),
        ({"flag": 1}, "flag: expected true or false, got int 1"),
        ({"flag": "yes"}, "flag: expected true or false, got str 'yes'"),
        (
            {"algo": "grp"},
            "algo: must be one of 'grpo', 'ppo', 'rloo'; got str 'grp'; did you mean",
        ),
        ({"name": 3}, "name: expected a string (quote it in YAML), got int 3"),
        ({"ids": 3}, "ids: expected a list (list[int]), got int 3"),
        ({"ids": [1, "x"]}, "ids[1]: expected an int, got str 'x'"),
        ({"betas": [0.9, None]}, "betas[1]: expected a float, got null"),
        ({"pair": [1]}, "pair: expected a list of exactly 2 items (tuple[int, str])"),
        ({"weights": {"a": "x"}}, "weights.a: expected a float, got str 'x'"),
        ({"weights": [1]}, "weights: expected a mapping (dict[str, float])"),
        ({"color": "green"}, "color: expected one of 'red' | 'blue', got str 'green'"),
        ({"inner": 5}, "inner: expected a mapping of Inner fields, got int 5"),
        ({"inner": {"top_k": 2.5}}, "inner.top_k: expected an int, got float 2.5"),
        ({"extra": {"name": 1}}, "extra.name: expected a string"),
    ],
)
def test_errors_name_the_field(data, expected):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data, source="recipes/grpo.yaml")
    assert str(info.value).startswith(expected)
    assert str(info.value).endswith("(from recipes/grpo.yaml)")


def test_from_dict_path_prefix_and_required_fields():
    with pytest.raises(ConfigError, match=r"^rl\.sampling\.temperature: expected a float"):
        from_dict(Inner, {"temperature": "x"}, path="rl.sampling")
    with pytest.raises(ConfigError, match=r"^model_path: required field is missing"):
        from_dict(Needs, {"depth": 3})
    # A section without a default is built from its own defaults, so the inner field is named.
    with pytest.raises(ConfigError, match=r"^needs\.model_path: required field is missing"):
        from_dict(Holder, {})
    assert from_dict(Holder, {"needs": {"model_path": "m"}}) == Holder(Needs("m", 2))
    with pytest.raises(ConfigError, match=r"^b: is derived \(init=False\)"):
        from_dict(Derived, {"b": 3})


def test_parse_overrides_yaml_scalars_and_nesting():
    args = ["--rl.lr=1e-4", "--rl.group_size", "8", "--x=true", "--a=[1,2]", "--name=null"]
    args += ["--s=yes", "--o=010", "--rl.eps", "-0.2", "--q='1e-4'", "--d={k: 1.5}"]
    args += ["--day=2024-01-01", "--inf=-.inf"]
    assert parse_overrides(args) == {
        "rl": {"lr": 1e-4, "group_size": 8, "eps": -0.2},
        "x": True,
        "a": [1, 2],
        "name": None,
        "s": "yes",  # YAML 1.2: only true/false are booleans
        "o": "010",  # a string (YAML 1.1 would read octal 8): an int field then errs
        "q": "1e-4",
        "d": {"k": 1.5},
        "day": "2024-01-01",  # no YAML 1.1 timestamps: dates stay strings
        "inf": float("-inf"),
    }
    assert type(parse_overrides(["--rl.lr=1e-4"])["rl"]["lr"]) is float
    # The later of two overrides wins; a section and a key inside it merge.
    assert parse_overrides(["--a.b=1", "--a.b=2", "--a={c: 3}"]) == {"a": {"b": 2, "c": 3}}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["rl.lr=1"], "malformed override 'rl.lr=1'"),
        (["--"], "malformed override '--'"),
        (["--rl.lr"], "override '--rl.lr' has no value"),
        (["--rl.lr", "--x=1"], "override '--rl.lr' has no value"),
        (["--rl..lr=1"], "malformed override key 'rl..lr'"),
        (["--1x=2"], "malformed override key '1x'"),
        (["--rl.lr="], "rl.lr: empty value"),
        (["--a=[1,2"], "invalid YAML"),
        (["--a.b=1", "--a.b.c=2"], "a.b: set to a value by one override and used as a section"),
    ],
)
def test_malformed_overrides_raise(args, expected):
    with pytest.raises(ConfigError) as info:
        parse_overrides(args)
    assert expected in str(info.value)


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_recipe_and_override_precedence(tmp_path):
    recipe = _write(
        tmp_path, "steps: 5\nlr: 1e-4\nname: from_recipe\ninner:\n  temperature: 0.5\n  top_k: 4\n"
    )
    cfg = load_config(Outer, recipe, ["--inner.temperature=0.7", "--steps", "7"])
    assert cfg.steps == 7  # override beats recipe
    assert cfg.lr == 1e-4 and type(cfg.lr) is float  # recipe beats default; 1e-4 is a float
    assert cfg.name == "from_recipe"
    assert cfg.inner == Inner(temperature=0.7, top_k=4)  # deep merge keeps the recipe's top_k
    assert cfg.flag is False and cfg.ids == [1, 2]  # untouched: dataclass defaults
    assert load_config(Outer) == Outer()
    assert load_config(Outer, _write(tmp_path, "", "empty.yaml")) == Outer()


def test_load_errors_name_field_and_source(tmp_path):
    recipe = _write(tmp_path, "inner:\n  temprature: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, recipe)
    assert str(info.value) == (
        f"inner.temprature: unknown key; did you mean 'temperature'? (from {recipe})"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Outer, None, ["--inner.top_k=1.5"])
    assert str(info.value) == "inner.top_k: expected an int, got float 1.5 (from --inner.top_k)"
    with pytest.raises(ConfigError, match=r"^inner\.top_k: .* \(from --inner\)$"):
        load_config(Outer, None, ["--inner={top_k: x}"])
    with pytest.raises(ConfigError, match=r"^ids\[1\]: expected an int, .* \(from --ids\)$"):
        load_config(Outer, None, ["--ids=[1, a]"])
    with pytest.raises(ConfigError) as info:
        load_config(Inner, None, ["--temprature=1"])
    assert str(info.value) == (
        "temprature: unknown key; did you mean 'temperature'? (from --temprature)"
    )


def test_missing_recipe_and_bad_yaml(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"recipe file not found: .*nope\.yaml"):
        load_config(Outer, missing)
    # Line 3 has a second ": " inside a plain scalar: PyYAML stops at line 3, column 8.
    bad = _write(tmp_path, "steps: 3\nlr: 0.1\nname: a: b\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, bad)
    assert "invalid YAML at line 3, column 8" in str(info.value)
    assert str(info.value).endswith(f"(from {bad})")
    dup = _write(tmp_path, "steps: 1\nlr: 0.1\nsteps: 2\n", "dup.yaml")
    with pytest.raises(ConfigError, match=r"line 3, column 1: duplicate key 'steps'"):
        load_config(Outer, dup)
    with pytest.raises(ConfigError, match=r"a recipe must be a mapping of fields, got list"):
        load_config(Outer, _write(tmp_path, "- 1\n", "list.yaml"))


def test_validate_runs_nested_first_and_names_the_section():
    CALLS.clear()
    load_config(Outer, None, ["--extra.name=q"])
    assert CALLS == ["inner", "leaf", "outer"]  # field order, each section before its parent
    with pytest.raises(ConfigError) as info:
        load_config(Outer, None, ["--inner.temperature=0"])
    assert str(info.value) == "inner: temperature: must be > 0, got 0.0"
    with pytest.raises(ConfigError) as info:
        load_config(Outer, None, ["--steps=0"])
    assert str(info.value) == "Outer: steps: must be >= 1, got 0"


def test_field_docs_reads_docstrings():
    docs = field_docs(Outer)
    assert docs["lr"] == "Peak learning rate."
    assert docs["inner"] == "Nested section."
    assert docs["inner.temperature"] == "Softmax temperature; must be > 0."
    assert docs["inner.top_k"] == "Keep the k most likely tokens\n(None keeps all)."
    assert docs["extra.name"] == "Leaf name."  # an optional section is documented too
    assert docs["pair"] == ""  # undocumented fields are listed, empty
    assert list(docs)[:3] == ["steps", "lr", "flag"]


def test_format_help_lists_type_default_and_doc():
    text = format_help(Outer, "posttrain rl")
    assert text.startswith("usage: posttrain rl ")
    assert "A config with every supported field type." in text
    assert (
        "  --inner.temperature  float  (default: 1.0)\n      Softmax temperature; must be > 0.\n"
        in text
    )
    assert "  --algo  'grpo' | 'ppo' | 'rloo'  (default: \"grpo\")\n" in text
    assert "  --seed  int | null  (default: null)\n" in text
    assert "  --betas  tuple[float, ...]  (default: [0.9, 0.99])\n" in text
    assert "  --extra  Leaf | null  (default: null)\n" in text
    assert '  --extra.name  str  (default: "leaf")\n' in text
    assert "  --model_path  str  (required)\n" in format_help(Needs, "x")


def test_to_dict_from_dict_round_trip():
    cfg = from_dict(Outer, FULL)
    data = to_dict(cfg)
    assert data["color"] == "blue" and data["betas"] == [0.8, 0.9] and data["out"] == "runs/x"
    assert data["inner"] == {"temperature": 0.5, "top_k": 4}
    assert json.loads(json.dumps(data)) == data  # plain JSON, nothing lost
    assert from_dict(Outer, data) == cfg
    assert to_dict(Derived()) == {"a": 1}  # derived fields are not stored


def test_save_config_reads_back_identically(tmp_path):
    # Strings that YAML 1.1 or 1.2 would read as numbers or booleans must come back as strings.
    cfg = from_dict(
        Outer, {**FULL, "name": "1e-4", "weights": {"no": 1.0, "010": 2.0, "2024-01-01": 3.0}}
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Outer, path) == cfg
    assert yaml.safe_load(path.read_text()) == to_dict(cfg)
    assert path.read_text().startswith(f"# Outer, fingerprint sha256:{fingerprint(cfg)}\n")


def test_fingerprint_stable_and_sensitive():
    cfg = from_dict(Outer, FULL)
    reordered = dict(reversed(list(FULL.items())))
    reordered["weights"] = {"b": 2, "a": 0.5}
    assert fingerprint(from_dict(Outer, reordered)) == fingerprint(cfg)
    # The contract's definition, recomputed by hand: sha256 of sorted, separator-free JSON.
    canon = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    assert fingerprint(cfg) == hashlib.sha256(canon.encode()).hexdigest()
    assert len(fingerprint(cfg)) == 64
    assert fingerprint(from_dict(Outer, {**FULL, "lr": 1.0})) == fingerprint(cfg)  # 1 == 1.0
    assert fingerprint(from_dict(Outer, {**FULL, "lr": 0.5})) != fingerprint(cfg)
    changed = from_dict(Outer, {**FULL, "inner": {"temperature": 0.5, "top_k": 5}})
    assert fingerprint(changed) != fingerprint(cfg)


def test_config_diff_names_changed_fields():
    old = from_dict(Outer, FULL)
    new = from_dict(Outer, {**FULL, "lr": 0.5, "inner": {"temperature": 0.5}})
    assert config_diff(old, new) == {"inner.top_k": (4, None), "lr": (1.0, 0.5)}
    assert config_diff(old, old) == {}


def test_config_error_survives_pickling():
    err = ConfigError("expected an int, got float 2.0", path="rl.steps", source="--rl.steps")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "rl.steps: expected an int, got float 2.0 (from --rl.steps)"
    assert isinstance(back, ValueError) and back.path == "rl.steps"


def test_union_and_lists_of_sections():
    cfg = load_config(Multi, None, ["--key=abc", "--stages=[{name: a}, {name: b}]"])
    assert cfg == Multi(key="abc", stages=[Leaf("a"), Leaf("b")])
    assert load_config(Multi, None, ["--key=3"]).key == 3
    with pytest.raises(ConfigError) as info:
        load_config(Multi, None, ["--key=1.5"])
    assert str(info.value) == "key: expected int | str, got float 1.5 (from --key)"
    with pytest.raises(ConfigError) as info:
        load_config(Multi, None, ["--stages=[{name: a}, {nme: b}]"])
    assert str(info.value) == "stages[1].nme: unknown key; did you mean 'name'? (from --stages)"
    CALLS.clear()
    load_config(Multi, None, ["--stages=[{name: a}, {name: b}]"])
    assert CALLS == ["leaf", "leaf"]  # validate() runs for sections inside lists too
