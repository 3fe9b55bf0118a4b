"""Atomic, verifiable checkpoints: safetensors weights, a weights_only state file, a manifest.

Layout of one checkpoint, ``<run_dir>/checkpoints/step-00000042/``:
    <group>.safetensors  one per weight group ("policy", "value_head", "reference", ...)
    state.pt             optimizer, scheduler, RNG, counters... (plain data, weights_only-safe)
    config.json          the resolved config of the run
    manifest.json        size and SHA-256 of every other file, step, config fingerprint, versions

A save writes ``step-N.tmp/``, fsyncs every file and the directory, renames it to ``step-N/``,
then moves the ``latest`` pointer (tmp + rename), and only then deletes old checkpoints. A
crash at any point leaves the previous checkpoint intact; ``*.tmp`` dirs are never loaded.
A directory without a manifest is incomplete and never silently loaded or skipped when named
explicitly (RELIABILITY CKPT-4, CKPT-5, SAFE-1, SAFE-5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.run.faults import InjectedFault, fault_point

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE = "state.pt"
CONFIG = "config.json"
LATEST = "latest"
WEIGHTS_SUFFIX = ".safetensors"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, unsafe or does not fit the model."""


class ConfigDriftError(CheckpointError):
    """The config changed since the checkpoint in fields the user did not allow."""


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint.

    Attributes:
        path: the ``step-N`` directory.
        step: the global step it was saved at.
        weights: {group: {tensor name: CPU tensor}}, one entry per ``*.safetensors`` file.
        state: the contents of ``state.pt`` (tensors on CPU).
        config: the resolved config saved with it.
        manifest: the parsed ``manifest.json`` (versions, fingerprint, file hashes).
    """

    path: Path
    step: int
    weights: dict[str, dict[str, torch.Tensor]]
    state: dict
    config: dict
    manifest: dict = field(default_factory=dict)


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint at `step`: ``step-00000042``."""
    return f"step-{step:08d}"


def module_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict made ready for safetensors: detached, CPU, contiguous, unshared.

    Tied parameters (e.g. input embedding and LM head) share storage, which safetensors
    refuses; the second and later names of a shared storage get their own copy. Tensors that
    already live on CPU are not copied otherwise, so save them before the next optimizer step.
    """
    return _prepare_tensors(module.state_dict(), what=type(module).__name__)


def _prepare_tensors(tensors: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{what}: {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen and storage.nbytes() > 0:
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error that lists every bad key.

    Args:
        module: the module to fill.
        state: {name: tensor}, e.g. ``checkpoint.weights["policy"]``.
        what: where `state` came from, for the message
            (e.g. "checkpoint step-00000003/policy.safetensors").

    Raises:
        CheckpointError: missing keys, unexpected keys or shape mismatches, all listed.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in {what}, {tuple(expected[k].shape)} in the model"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_short_list(shapes)}")
    if problems:
        raise CheckpointError(
            f"{what} does not fit {type(module).__name__}: " + "; ".join(problems)
        )
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:  # dtype casts and the like; keep the origin in the message
        raise CheckpointError(f"loading {what} into {type(module).__name__} failed: {e}") from e


def _short_list(items: list[str], limit: int = 20) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _check_plain(obj: object, path: str) -> None:
    """Refuse anything `torch.load(weights_only=True)` could not read back, naming where."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"state{path}: key {k!r} is a {type(k).__name__}")
            _check_plain(v, f"{path}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{path}[{i}]")
        return
    raise CheckpointError(
        f"state{path} is a {type(obj).__module__}.{type(obj).__qualname__}; state.pt holds only "
        "tensors, dicts, lists, tuples, str, int, float, bool and None (weights_only loading)"
    )


def _canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: object) -> object:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"config value {obj!r} of type {type(obj).__name__} is not JSON")


def config_fingerprint(config: dict) -> str:
    """SHA-256 (hex) of the config as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(_canonical_json(config).encode()).hexdigest()


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict) and (obj or not prefix):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _matches(name: str, patterns: set[str]) -> bool:
    """True when `name` or one of its dotted parents is in `patterns` ("rl" covers "rl.x")."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in patterns for i in range(1, len(parts) + 1))


def check_config_drift(
    saved: dict, current: dict, allow: Iterable[str] = (), ignore: Iterable[str] = ()
) -> list[str]:
    """Compare the checkpoint's config with the current one, field by dotted field.

    Args:
        saved: config stored in the checkpoint.
        current: config of the run that resumes.
        allow: fields (or dotted prefixes) allowed to change; they are returned for logging.
        ignore: fields never compared (e.g. the output dir or the resume flag itself).

    Returns:
        The allowed changes, formatted like ``"train.lr: 0.001 -> 0.0005"``.

    Raises:
        ConfigDriftError: naming every changed field that is neither allowed nor ignored.
    """
    a = _flatten(json.loads(_canonical_json(saved)))
    b = _flatten(json.loads(_canonical_json(current)))
    allow_set, ignore_set = set(allow), set(ignore)
    changed, allowed = [], []
    for key in sorted(set(a) | set(b)):
        if _matches(key, ignore_set):
            continue
        old, new = a.get(key, _ABSENT), b.get(key, _ABSENT)
        # 4 and 4.0 are the same setting (YAML vs JSON); True and 1 are not.
        if old == new and (type(old) is type(new) or {type(old), type(new)} <= {int, float}):
            continue
        line = f"{key}: {_show(old)} -> {_show(new)}"
        (allowed if _matches(key, allow_set) else changed).append(line)
    if changed:
        raise ConfigDriftError(
            "config changed since the checkpoint in "
            + ", ".join(line.split(":")[0] for line in changed)
            + ":\n  "
            + "\n  ".join(changed)
            + "\nresume with the original values, or allow each change explicitly "
            "(--allow-config-change FIELD)"
        )
    return allowed


_ABSENT = object()


def _show(value: object) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_entry(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def _versions() -> dict[str, str]:
    import posttrain

    out = {"posttrain": posttrain.__version__, "torch": torch.__version__}
    for pkg in ("transformers", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict,
    config: dict,
    keep_last: int = 2,
) -> Path:
    """Write ``<run_dir>/checkpoints/step-<N>/`` atomically, then rotate old checkpoints.

    Args:
        run_dir: the run directory.
        step: global step (>= 0); one checkpoint per step, never overwritten.
        weights: {group: state dict}; each group becomes ``<group>.safetensors``. Shared
            (tied) storage is copied per name, as in `module_weights`.
        state: everything else (optimizer, scheduler, `capture_rng()`, counters...), made of
            tensors, dicts, lists, tuples, str, int, float, bool and None only.
        config: the resolved config (JSON-serialisable).
        keep_last: how many complete checkpoints to keep (>= 1); older ones are deleted only
            after this one and the ``latest`` pointer are durable.

    Returns:
        The final checkpoint directory.

    Raises:
        CheckpointError: the step's directory exists already, or an argument is unsavable.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it")
    for group in weights:
        if not _GROUP_NAME.match(group):
            raise CheckpointError(f"weight group name {group!r} is not a safe file name")
    _check_plain(state, "")
    config_text = json.dumps(config, sort_keys=True, indent=2, default=_json_default) + "\n"

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (final.name + ".tmp")
    if tmp.exists():  # left by a crashed save of this same step: never complete, safe to drop
        log.warning("removing incomplete %s left by an interrupted save", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir()

    try:
        _write_files(tmp, step, weights, state, config, config_text)
    except InjectedFault:
        raise  # stands in for SIGKILL: leave the debris a real crash would leave
    except BaseException:
        # Disk full, bad tensor, Ctrl-C...: free the space; the previous checkpoint is intact.
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    os.rename(tmp, final)
    _fsync(root)
    fault_point("save:after_rename", step)
    _write_latest(root, final.name)
    fault_point("save:after_latest", step)
    _rotate(root, keep_last, newest=step)
    log.info("saved checkpoint %s", final)
    return final


def _write_files(
    tmp: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict,
    config: dict,
    config_text: str,
) -> None:
    """Write and fsync every file of a checkpoint into `tmp`, the manifest last."""
    written: list[Path] = []

    def done(path: Path) -> None:
        _fsync(path)
        written.append(path)
        fault_point("save:after_file", len(written))

    for group, tensors in weights.items():
        path = tmp / f"{group}{WEIGHTS_SUFFIX}"
        ready = _prepare_tensors(tensors, what=f"weights[{group!r}]")
        save_file(ready, str(path), metadata={"step": str(step), "group": group})
        done(path)
    with open(tmp / STATE, "wb") as f:
        torch.save(state, f)
    done(tmp / STATE)
    (tmp / CONFIG).write_text(config_text)
    done(tmp / CONFIG)

    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "config_fingerprint": config_fingerprint(config),
        "versions": _versions(),
        "files": {p.name: _file_entry(p) for p in written},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    done(tmp / MANIFEST)
    _fsync(tmp)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    _fsync(root)


def _rotate(root: Path, keep_last: int, newest: int) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, and stale older ``.tmp``.

    Only checkpoints at or below `newest` count: a newer one belongs to a timeline that a
    resume from an older checkpoint abandoned, and is the user's to delete, not ours.
    """
    dirs = _step_dirs(root)
    newer = [p.name for s, p in dirs if s > newest]
    if newer:
        log.warning(
            "checkpoints %s are newer than the one just saved (step %d): they come from an "
            "abandoned run and auto-resume would pick them; delete them",
            newer,
            newest,
        )
    complete = [(s, p) for s, p in dirs if s <= newest and (p / MANIFEST).is_file()]
    for _, path in complete[keep_last:]:
        log.info("rotating out %s (keep_last=%d)", path, keep_last)
        shutil.rmtree(path)
    for path in root.glob("step-*.tmp"):
        m = _STEP_DIR.match(path.name[: -len(".tmp")])
        if m and int(m.group(1)) < newest:
            shutil.rmtree(path, ignore_errors=True)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``step-N`` directories under `root`, newest first (``*.tmp`` excluded)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _read_manifest(path: Path) -> dict:
    if path.name.endswith(".tmp"):
        raise CheckpointError(f"incomplete checkpoint {path}: a *.tmp dir is an unfinished save")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"incomplete checkpoint {path}: no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
        files, step = manifest["files"], manifest["step"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"corrupt {mpath}: {e!r}") from e
    if STATE not in files or CONFIG not in files:
        raise CheckpointError(f"corrupt {mpath}: it does not list {STATE} and {CONFIG}")
    for name, entry in files.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        if not ok or not isinstance(entry.get("size"), int) or "/" in name or name[:1] == ".":
            raise CheckpointError(f"corrupt {mpath}: bad entry {name!r}: {entry!r}")
    m = _STEP_DIR.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{mpath} says step {step}, the directory name says otherwise")
    return manifest


def _verify_files(path: Path, manifest: dict, hashes: bool) -> None:
    """Check every listed file exists with its size (and SHA-256 when `hashes`)."""
    for name, entry in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"corrupt checkpoint {path}: {name} is missing")
        size = f.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"corrupt checkpoint {path}: {name} has {size} bytes, manifest says "
                f"{entry['size']} (truncated or overwritten)"
            )
        if hashes and _file_entry(f)["sha256"] != entry["sha256"]:
            raise CheckpointError(f"corrupt checkpoint {path}: {name} fails its SHA-256 check")


def load_checkpoint(
    path: Path, *, expected_fingerprint: str | None = None, mmap: bool = False
) -> Checkpoint:
    """Verify a checkpoint against its manifest and load it onto the CPU.

    Args:
        path: a ``step-N`` directory.
        expected_fingerprint: when given, the checkpoint's config fingerprint must equal it
            (use `check_config_drift` on ``.config`` for a field-by-field report instead).
        mmap: memory-map ``state.pt`` rather than reading it (big optimizer states).

    Returns:
        The `Checkpoint`; ``state.pt`` is read with ``torch.load(weights_only=True)`` only.

    Raises:
        CheckpointError: missing dir or manifest, a file missing, truncated or failing its
            hash, an unsafe or unreadable file; the message names the path and the file.
        ConfigDriftError: the fingerprint differs from `expected_fingerprint`.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    manifest = _read_manifest(path)
    _verify_files(path, manifest, hashes=True)
    if expected_fingerprint is not None and manifest["config_fingerprint"] != expected_fingerprint:
        raise ConfigDriftError(
            f"checkpoint {path} was saved with config fingerprint "
            f"{manifest['config_fingerprint'][:12]}..., the current config has "
            f"{expected_fingerprint[:12]}...; compare the configs with check_config_drift"
        )
    weights = {}
    for name in sorted(manifest["files"]):
        if name.endswith(WEIGHTS_SUFFIX):
            try:
                weights[name[: -len(WEIGHTS_SUFFIX)]] = load_file(str(path / name), device="cpu")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"cannot read {path / name}: {e}") from e
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # UnpicklingError for a forbidden global, RuntimeError for bad zip
        raise CheckpointError(
            f"refusing/failing to load {path / STATE} with weights_only=True: {e}"
        ) from e
    try:
        config = json.loads((path / CONFIG).read_text())
    except ValueError as e:
        raise CheckpointError(f"cannot parse {path / CONFIG}: {e}") from e
    return Checkpoint(path, int(manifest["step"]), weights, state, config, manifest)


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``<run_dir>/checkpoints``, or None.

    Complete means: a ``step-N`` dir (not ``*.tmp``) whose manifest parses and whose files all
    exist with the listed sizes (hashes are checked later, by `load_checkpoint`). Skipped
    candidates are logged with the reason, and so is the pick.
    """
    root = Path(run_dir) / CHECKPOINTS
    for tmp in sorted(root.glob("step-*.tmp")) if root.is_dir() else []:
        log.info("ignoring unfinished save %s", tmp)
    for _, path in _step_dirs(root):
        try:
            _verify_files(path, _read_manifest(path), hashes=False)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        log.info("latest complete checkpoint: %s", path)
        return path
    log.info("no complete checkpoint under %s", root)
    return None


def resolve_resume(run_dir: Path, resume: str | os.PathLike | None) -> Path | None:
    """Turn the ``resume`` setting into a checkpoint directory; never silently start fresh.

    Args:
        run_dir: the run directory.
        resume: None (start fresh); "auto" (the latest complete checkpoint, or None when
            there is none); "must" (the latest, error if none); or a path to a ``step-N`` dir,
            to a ``latest`` pointer file, or to a run/checkpoints dir (its latest; error if none).

    Returns:
        The checkpoint directory to load, or None to start fresh.

    Raises:
        CheckpointError: "must" or an explicit path with no usable checkpoint; the message
            names the path and the missing or corrupt file.
    """
    if resume is None:
        return None
    if resume == "auto":
        return find_latest_checkpoint(run_dir)
    if resume == "must":
        found = find_latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(
                f"resume='must' but there is no complete checkpoint under "
                f"{Path(run_dir) / CHECKPOINTS}"
            )
        return found
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"resume path {p} does not exist")
    if p.is_file() and p.name == LATEST:
        p = p.parent / p.read_text().strip()
    elif p.is_dir() and not _looks_like_checkpoint(p):
        run = p.parent if p.name == CHECKPOINTS else p
        found = find_latest_checkpoint(run)
        if found is None:
            raise CheckpointError(f"resume path {p} holds no complete checkpoint")
        return found
    if not p.is_dir():
        raise CheckpointError(f"resume path {p} is not a checkpoint directory")
    _verify_files(p, _read_manifest(p), hashes=False)
    log.info("resuming from %s (explicit)", p)
    return p


def _looks_like_checkpoint(p: Path) -> bool:
    return (p / MANIFEST).exists() or p.name.endswith(".tmp") or bool(_STEP_DIR.match(p.name))
