"""Typed dataclass configs: YAML recipes, dotted CLI overrides, validation, help, fingerprints.

A config is a (possibly nested) dataclass. Each field carries a docstring (a string literal right
after its annotated assignment, read by `field_docs`) and each section may define `validate()`,
which raises `ValueError`. Defaults live only in the dataclasses; nothing here invents one.

Precedence, lowest first: dataclass defaults < YAML recipe < `--section.key=value` overrides.
Recipes and override values are read with YAML 1.2 core scalars: `1e-4` is a float and only
`true`/`false` are booleans; `010` and `2024-01-01` stay strings. (PyYAML's YAML 1.1 default
reads `1e-4` as a string, `no`/`off` as False and `010` as 8: silent misconfigurations.)
Duplicate keys in a recipe are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, NoReturn, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A wrong config key, value, file or override; names the dotted field path and the source."""

    def __init__(self, reason: str, *, path: str = "", source: str = "") -> None:
        super().__init__(reason)
        self.reason, self.path, self.source = reason, path, source

    def __str__(self) -> str:
        msg = f"{self.path}: {self.reason}" if self.path else self.reason
        return f"{msg} (from {self.source})" if self.source else msg

    def __reduce__(self) -> tuple:
        # Keep path and source when pickled across processes (torchrun workers, spawn).
        return (type(self), (self.reason,), {"path": self.path, "source": self.source})


# ---------------------------------------------------------------- YAML with 1.2 core scalars
_TAG = "tag:yaml.org,2002:"
_DIGITS = r"[0-9]+(?:_[0-9]+)*"
# No leading zeros: "010" stays a string (YAML 1.1 reads it as octal 8), so an int field errs.
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*(?:_[0-9]+)*)$")
_FLOAT_RE = re.compile(
    rf"^(?:[-+]?(?:{_DIGITS}\.(?:[0-9_]*)|\.{_DIGITS})(?:[eE][-+]?[0-9]+)?"
    rf"|[-+]?{_DIGITS}[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 core scalars; a duplicate mapping key is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class reports unhashable keys itself
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that YAML 1.1 *or* 1.2 would read as a non-string, so that the saved
    file reads back identically with this module and with plain `yaml.safe_load`."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _use_core_scalars(cls: type, keep_yaml11: bool) -> None:
    replaced = {_TAG + t for t in ("bool", "int", "float", "timestamp")}  # dates stay strings
    cls.yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in lst if keep_yaml11 or tag not in replaced]
        for ch, lst in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, regexp, first in (("bool", _BOOL_RE, "tTfF"), ("int", _INT_RE, "-+0123456789")):
        cls.add_implicit_resolver(_TAG + tag, regexp, list(first))
    cls.add_implicit_resolver(_TAG + "float", _FLOAT_RE, list("-+0123456789."))


_use_core_scalars(_Loader, keep_yaml11=False)
_use_core_scalars(_Dumper, keep_yaml11=True)


def _load_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError with the line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # safe: _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}: {e.problem or e}", source=source) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", source=source) from e


# ---------------------------------------------------------------- building typed configs
Sources = Callable[[str], str]
"""Maps a dotted field path to where its value came from (a file or a `--flag`)."""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    try:
        return typing.get_type_hints(cls)
    except NameError as e:  # a class defined inside a function cannot be resolved by name
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {e}") from e


def _section_type(tp: Any) -> type | None:
    """The dataclass behind `Sub` or `Sub | None`, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = arms[0] if len(arms) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _type_name(tp: Any) -> str:
    """Readable annotation for errors and --help: `int | null`, `list[float]`, `'a' | 'b'`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(tp, "__name__", repr(tp))


def from_dict(cls: type[T], data: Mapping, *, source: str = "", path: str = "") -> T:
    """Build a (possibly nested) dataclass from plain data, checking every value's type.

    `source` names where `data` came from and `path` is the dotted prefix of `cls` in a larger
    config; both only feed error messages. Raises ConfigError on unknown keys (suggesting close
    matches), missing required fields and wrong types.
    """
    return _build(cls, data, path, lambda _path: source)


def _build(cls: type[T], data: Any, path: str, src: Sources) -> T:
    hints, fields = _hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(data, Mapping):
        got = f"expected a mapping of {cls.__name__} fields, got {_describe(data)}"
        raise ConfigError(got, path=path or cls.__name__, source=src(path))
    settable = [name for name, f in fields.items() if f.init]
    for key in (k for k in data if k not in settable):
        key_path = _join(path, str(key))
        close = difflib.get_close_matches(str(key), settable, n=3, cutoff=0.6)
        if key in fields:
            reason = "is derived (init=False) and cannot be set"
        elif close:
            reason = f"unknown key; did you mean {' or '.join(map(repr, close))}?"
        else:
            reason = f"unknown key; valid keys: {', '.join(settable)}"
        raise ConfigError(reason, path=key_path, source=src(key_path))
    kwargs: dict[str, Any] = {}
    for name in settable:
        f, field_path = fields[name], _join(path, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], field_path, src)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            sub = hints[name]
            if not (isinstance(sub, type) and dataclasses.is_dataclass(sub)):
                how = f"set it in the recipe or with --{field_path}=VALUE"
                raise ConfigError(f"required field is missing (no default); {how}", path=field_path)
            kwargs[name] = _build(sub, {}, field_path, src)  # a section: its own defaults
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check
        raise _rewrap(e, path or cls.__name__) from e


def _convert(tp: Any, value: Any, path: str, src: Sources) -> Any:
    """Check `value` against annotation `tp` and convert it (int→float, list→tuple, str→Enum)."""

    def fail(expected: str, reason: str = "") -> NoReturn:
        reason = reason or f"expected {expected}, got {_describe(value)}"
        raise ConfigError(reason, path=path, source=src(path))

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        return None if value is None else fail("null")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own, more precise error
            return _convert(arms[0], value, path, src)
        for arm in arms:
            try:
                return _convert(arm, value, path, src)
            except ConfigError:
                continue
        fail(_type_name(tp))
    if origin is Literal:
        for allowed in args:  # type-strict: Literal[1] does not take true
            if type(allowed) is type(value) and allowed == value:
                return allowed
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        fail("", f"must be one of {', '.join(map(repr, args))}; got {_describe(value)}{hint}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, path, src)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        by_value = [m for m in tp if type(m.value) is type(value) and m.value == value]
        return by_value[0] if by_value else fail(f"one of {_type_name(tp)}")
    if tp is bool:
        return value if type(value) is bool else fail("true or false")
    if tp is int:  # bool is an int subclass and 2.0 a float: both refused, never truncated
        return value if isinstance(value, int) and not isinstance(value, bool) else fail("an int")
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else fail("a float")
    if tp is str:
        return value if isinstance(value, str) else fail("a string (quote it in YAML)")
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return tp(value) if isinstance(value, (str, os.PathLike)) else fail("a path string")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(f"a list ({_type_name(tp)})")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                fail(f"a list of exactly {len(args)} items ({_type_name(tp)})")
            kinds = args
        else:
            kinds = [args[0] if args else Any] * len(value)
        items = [
            _convert(k, v, f"{path}[{i}]", src)
            for i, (k, v) in enumerate(zip(kinds, value, strict=True))
        ]
        return tuple(items) if tuple in (origin, tp) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            fail(f"a mapping ({_type_name(tp)})")
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            key_path = _join(path, str(k))
            out[_convert(key_tp, k, key_path, src)] = _convert(val_tp, v, key_path, src)
        return out
    if isinstance(tp, type):
        return value if isinstance(value, tp) else fail(tp.__name__)
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def _rewrap(e: ValueError, section: str) -> ConfigError:
    """A section's ValueError as a ConfigError naming the section (a ConfigError's own relative
    path is kept under the section)."""
    if not isinstance(e, ConfigError):
        return ConfigError(str(e), path=section)
    return ConfigError(
        e.reason, path=_join(section, e.path) if e.path else section, source=e.source
    )


def validate_config(cfg: Any, path: str = "") -> None:
    """Call `validate()` on every dataclass in `cfg`, nested sections first; a ValueError is
    re-raised as ConfigError naming the section path (the class name for the root)."""
    for f in dataclasses.fields(cfg):
        _validate_value(getattr(cfg, f.name), _join(path, f.name))
    check = getattr(cfg, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise _rewrap(e, path or type(cfg).__name__) from e


def _validate_value(value: Any, path: str) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        validate_config(value, path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _validate_value(item, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for k, item in value.items():
            _validate_value(item, _join(path, str(k)))


# ---------------------------------------------------------------- plain data out
def to_dict(cfg: Any) -> dict:
    """The config as plain JSON-able data: nested dicts, enums by value, tuples and paths as
    lists and strings; init=False (derived) fields are left out so `from_dict` takes it back."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg, type(cfg).__name__)


def _plain(value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), _join(path, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, enum.Enum):
        return _plain(value.value, path)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{path}: config dict keys must be strings, got {list(value)!r}")
        return {k: _plain(v, _join(path, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path}: cannot store a {type(value).__name__} in a config")


def fingerprint(cfg: Any) -> str:
    """SHA-256 hex digest of the canonical JSON (sorted keys, no spaces) of `to_dict(cfg)`;
    a plain mapping is hashed as is."""
    data = _plain(cfg, "") if isinstance(cfg, Mapping) else to_dict(cfg)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_config(cfg: Any, path: Path) -> Path:
    """Write the resolved config as YAML (atomically, with its fingerprint in a comment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    header = f"# {type(cfg).__name__}, fingerprint sha256:{fingerprint(cfg)}\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + body, encoding="utf-8")
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated config behind
    return path


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to `{"dotted.key": leaf}`; lists and empty mappings are leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key_path = _join(prefix, str(key))
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, key_path))
        else:
            out[key_path] = value
    return out


def config_diff(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted fields whose values differ: `{path: (old, new)}`, sorted by path (for CKPT-7's
    drift check). Dataclasses go through `to_dict`; a field absent on one side shows as None."""
    a = flatten(old if isinstance(old, Mapping) else to_dict(old))
    b = flatten(new if isinstance(new, Mapping) else to_dict(new))
    changed = [k for k in sorted(a.keys() | b.keys()) if k not in a or k not in b or a[k] != b[k]]
    return {k: (a.get(k), b.get(k)) for k in changed}


# ---------------------------------------------------------------- CLI overrides and loading
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_overrides(args: Sequence[str]) -> dict:
    """`["--rl.lr=1e-4", "--rl.group_size", "8"]` → `{"rl": {"lr": 0.0001, "group_size": 8}}`.

    Values are YAML scalars or flow collections (`true`, `null`, `[1, 2]`, `{a: 1}`); a later
    override of the same key wins. Malformed arguments raise ConfigError.
    """
    return _parse_overrides(args)[0]


def _parse_overrides(args: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """The override tree, and the flag that set each leaf (`{"rl.lr": "--rl.lr"}`)."""
    tree: dict = {}
    flags: dict[str, str] = {}
    args, i = list(args), 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(
                f"malformed override {arg!r}: expected --section.key=value", source=arg
            )
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, text, i = arg[2:], args[i + 1], i + 1
        else:
            raise ConfigError(f"override {arg!r} has no value (write {arg}=VALUE)", source=arg)
        if not _KEY_RE.match(key):
            raise ConfigError(f"malformed override key {key!r}: expected e.g. rl.lr", source=arg)
        flag = f"--{key}"
        if not text.strip():  # an empty shell variable must not silently mean null
            raise ConfigError("empty value; write null or ''", path=key, source=flag)
        value = _load_yaml(text, source=flag)
        _insert(tree, key.split("."), value, flag)
        leaves = flatten(value, key) if isinstance(value, Mapping) and value else {key: value}
        flags.update(dict.fromkeys(leaves, flag))
        i += 1
    return tree, flags


def _insert(tree: dict, parts: list[str], value: Any, flag: str) -> None:
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            reason = "set to a value by one override and used as a section by another"
            raise ConfigError(reason, path=".".join(parts[: depth + 1]), source=flag)
        node = child
    old = node.get(parts[-1])
    both = isinstance(old, dict) and isinstance(value, Mapping)
    node[parts[-1]] = _deep_merge(old, value) if both else value


def _deep_merge(base: Mapping, over: Mapping) -> dict:
    """`over` on top of `base`, mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = _deep_merge(old, value) if both else value
    return out


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults < YAML `recipe` < `--section.key=value` overrides, type-checked, then every
    section's `validate()` (nested first). All failures are ConfigErrors naming field and source."""
    data: Mapping = {}
    recipe_src = str(recipe) if recipe is not None else ""
    if recipe is not None:
        file = Path(recipe)
        if not file.is_file():
            what = "is not a file" if file.exists() else "not found"
            raise ConfigError(f"recipe file {what}: {file.resolve()}", source=recipe_src)
        loaded = _load_yaml(file.read_text(encoding="utf-8"), recipe_src)
        if loaded is not None and not isinstance(loaded, Mapping):
            got = f"a recipe must be a mapping of fields, got {_describe(loaded)}"
            raise ConfigError(got, source=recipe_src)
        data = loaded or {}
    tree, flags = _parse_overrides(overrides)

    def src(path: str) -> str:
        if path in flags:
            return flags[path]
        # a list element (rl.stages[2].name) came from whichever override set the list
        owners = [k for k in flags if path.startswith(k + "[")]
        return flags[max(owners, key=len)] if owners else recipe_src

    cfg = _build(cls, _deep_merge(data, tree), "", src)
    validate_config(cfg)
    return cfg
