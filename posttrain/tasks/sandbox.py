"""Run untrusted Python (model-written code) in a separate, killable, resource-limited process.

Nothing the child does is trusted: the parent enforces the wall clock itself (SIGKILL to the
child's whole process group at `wall_s + grace_s`), reads stdout/stderr with byte caps, and
decides the status from what it observed. The child is `python -I -S -B` (no site-packages, no
PYTHON* variables, no cwd on sys.path) with an empty environment (PATH, LANG, HOME=its own
fresh working directory), stdin from a file or /dev/null, no inherited descriptors, in a new
session. A small launcher (`_LAUNCHER`) runs first inside the child and applies, in order:

1. rlimits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0;
2. when the parent is root: a private network namespace (no network at all);
3. PR_SET_NO_NEW_PRIVS (setuid binaries gain nothing);
4. when the parent is root: a drop to a per-run uid/gid (60100 + slot, no groups). Root is
   exempt from RLIMIT_NPROC, so without this a fork bomb is held only by the group kill and
   the per-process RLIMIT_AS/CPU; under its own uid NPROC applies, the child cannot signal or
   trace the parent, and after the run the parent SIGKILLs every process of that uid (found in
   /proc), including any that left the process group with setsid(), and deletes what the uid
   owns in /tmp, /var/tmp and /dev/shm. With Landlock on, the uid keeps CAP_DAC_READ_SEARCH
   only, so that a stdlib under a private home (e.g. /root/.pyenv) stays importable, while
   Landlock confines every read to the rules below; without Landlock it keeps nothing;
5. Landlock (Linux >= 5.13, unprivileged): read-only access to the standard library (not its
   site-packages) and the shared-library directories in use, read/write to the working
   directory only, no TCP (ABI >= 4), no signals or abstract sockets outside the sandbox
   (ABI >= 6); nothing can be executed.

Then it writes a ready marker to stderr (before any model code runs, so the model cannot forge
it) and runs the program. A layer that the kernel or the privileges do not allow is skipped;
the parent logs once that isolation is best-effort, and `SandboxLimits.require_isolation`
turns that into a refusal. Without root there is no per-run uid: a child can escape the group
kill with setsid() and, without Landlock >= 6, signal the parent (same uid). Run trainers as
root in a container for the full set. Linux only.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

SandboxStatus = Literal["ok", "timeout", "memory", "crash", "output_limit"]

_READY = b"\x00posttrain-sandbox-ready "
_MEMORY_EXIT = 86  # the launcher's exit code for an uncaught MemoryError
_SETUP_EXIT = 87  # the launcher could not set the sandbox up (infrastructure, not the model)
_UID_BASE = 60100  # above login.defs UID_MAX (60000), below systemd's dynamic users (61184)
_UID_SLOTS = 256
_DRAIN_S = 0.5  # how long to wait for EOF once every process of the run has been killed
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
_DISABLED_LAYERS: set[str] = set()  # tests switch layers off ("uid", "netns", "landlock")


class SandboxStartError(RuntimeError):
    """The sandbox itself failed (no interpreter, setup refused): an infrastructure error."""


@dataclass
class SandboxLimits:
    """Limits for one sandboxed run. Defaults suit grading a small function."""

    wall_s: float = 2.0
    """Wall-clock budget, enforced by the parent (kill at wall_s + grace_s)."""
    cpu_s: int = 2
    """RLIMIT_CPU seconds (SIGXCPU at cpu_s, SIGKILL at cpu_s + 1)."""
    memory_mb: int = 256
    """RLIMIT_AS per process, in MiB (the interpreter itself needs ~20)."""
    max_output_bytes: int = 65536
    """Cap on stdout (exceeding it kills the run: `output_limit`) and on kept stderr."""
    max_file_bytes: int = 1_000_000
    """RLIMIT_FSIZE: the largest file the child may write."""
    max_open_files: int = 32
    """RLIMIT_NOFILE."""
    max_processes: int = 16
    """RLIMIT_NPROC (processes and threads of the run's uid; only effective under a uid drop)."""
    grace_s: float = 0.25
    """Extra seconds after wall_s before the parent's SIGKILL."""
    tmp_root: str | None = None
    """Parent of the per-run working directories (default: a private dir in the system temp)."""
    require_isolation: bool = False
    """Refuse to run (SandboxStartError) unless filesystem and network isolation both apply."""

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        checks = {
            "wall_s": self.wall_s > 0,
            "cpu_s": self.cpu_s >= 1,
            "memory_mb": self.memory_mb >= 64,
            "max_output_bytes": self.max_output_bytes >= 1,
            "max_file_bytes": self.max_file_bytes >= 0,
            "max_open_files": self.max_open_files >= 8,
            "max_processes": self.max_processes >= 1,
            "grace_s": self.grace_s >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SandboxLimits.{name}={getattr(self, name)!r} is out of range")


@dataclass
class SandboxResult:
    """What the parent observed of one run.

    Attributes:
        status: ok (exit 0), timeout (killed at the wall clock, or CPU limit), memory
            (MemoryError), crash (any other exit), output_limit (stdout over the cap).
        stdout: at most `max_output_bytes` bytes.
        stderr: at most `max_output_bytes` bytes, the launcher's ready line removed.
        wall_s: seconds from start to the last process killed and reaped.
        returncode: the child's exit status (negative: killed by that signal).
    """

    status: SandboxStatus
    stdout: bytes
    stderr: bytes
    wall_s: float
    returncode: int | None


from posttrain.tasks.sandbox_launcher import LAUNCHER as _LAUNCHER  # noqa: E402

_uid_lock = threading.Lock()
_uid_held: dict[int, socket.socket] = {}
_uid_next = 0
_uid_swept: set[int] = set()  # uids this process has already cleared of leftovers
_root_lock = threading.Lock()
_default_root: str | None = None
_warned = False
_last_report: dict[str, Any] | None = None


def _acquire_uid() -> int:
    """Claim a sandbox uid for one run, exclusive on this host (an abstract-socket lock that
    the kernel releases when the holder dies); the first time, kill anything left under it."""
    global _uid_next
    with _uid_lock:
        # Round robin: the killed processes of a run stay zombies (still counted by
        # RLIMIT_NPROC) until init reaps them, so do not hand the same uid out again at once.
        order = [_UID_BASE + (_uid_next + i) % _UID_SLOTS for i in range(_UID_SLOTS)]
        for uid in order:
            if uid in _uid_held:
                continue
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(f"\0posttrain-sandbox-uid-{uid}")
            except OSError:
                lock.close()
                continue
            _uid_held[uid] = lock
            _uid_next = uid - _UID_BASE + 1
            break
        else:
            raise SandboxStartError(f"all {_UID_SLOTS} sandbox uids from {_UID_BASE} are busy")
        first = uid not in _uid_swept
        _uid_swept.add(uid)
    if first:  # a crashed trainer may have left processes or files under this uid
        _kill_uid(uid)
    return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uid_held.pop(uid).close()


def _live_uid(pid: int | str) -> int | None:
    """The real uid of process `pid`, or None if it is gone or a zombie (dead, unreaped)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    state, uid = text.find(b"\nState:"), text.find(b"\nUid:")
    if state < 0 or uid < 0 or text[state + 7 :].lstrip()[:1] == b"Z":
        return None
    return int(text[uid + 5 : text.index(b"\n", uid + 1)].split()[0])


def sandbox_pids(uid: int | None = None) -> list[int]:
    """Live processes under `uid` (default: every sandbox uid this process has used, not
    those of other trainers on the host). Empty between runs: nothing outlives its run."""
    with _uid_lock:
        uids = set(_uid_swept) if uid is None else {uid}
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and _live_uid(n) in uids]


def _kill_uid(uid: int) -> None:
    """SIGKILL every live process of `uid`, then remove what it left in world-writable dirs.

    Runs as root in the parent (never as kill(-1): a mistake there kills the host). Each pid
    is pinned with a pidfd before its uid is re-checked, so a reused pid is never hit. A
    killed process cannot fork and RLIMIT_NPROC bounds the rest, so a few passes empty it.
    """
    for _ in range(200):
        pids = sandbox_pids(uid)
        if not pids:
            break
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if _live_uid(pid) == uid:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)
        time.sleep(0.002)
    else:
        log.warning("sandbox uid %d still has live processes after 200 kill passes", uid)
    for top in _WORLD_WRITABLE:
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid == uid:
                    _remove(e.path)
            except OSError:
                pass


def _remove(path: str) -> None:
    """Remove a file or a tree, making directories writable first (a child may chmod them)."""

    def retry(func: Any, p: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
        func(p)

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=retry)
    else:
        os.unlink(path)


def _tmp_root(limits: SandboxLimits) -> str:
    global _default_root
    if limits.tmp_root is not None:
        return limits.tmp_root
    with _root_lock:
        if _default_root is None:
            _default_root = tempfile.mkdtemp(prefix="posttrain-sandbox-")
            os.chmod(_default_root, 0o711)  # others may enter their own run dir, not list
            atexit.register(shutil.rmtree, _default_root, ignore_errors=True)
    return _default_root


def _note_isolation(report: dict[str, Any]) -> None:
    global _warned, _last_report
    _last_report = report
    isolated = report["landlock"] and (report["netns"] or report["landlock"] >= 4)
    if not isolated and not _warned:
        _warned = True
        log.warning(
            "sandbox isolation is best-effort (%s): without Landlock the child can read and "
            "write what its uid may; without a network namespace or Landlock >= 4 it may use "
            "the network",
            json.dumps(report),
        )


def _read_into(fd: int, buf: bytearray, cap: int) -> tuple[bool, bool]:
    """Read one chunk from `fd` into `buf`, keeping at most `cap` bytes.
    Returns (eof, over_cap)."""
    chunk = os.read(fd, 65536)
    if not chunk:
        return True, False
    room = cap - len(buf)
    buf += chunk[: max(room, 0)]
    return False, len(chunk) > room


def _exited(pid: int) -> bool:
    """Has `pid` exited? Leaves it unreaped, so its pgid cannot be reused before our kill."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _read_pipes(
    proc: subprocess.Popen[bytes],
    bufs: dict[int, bytearray],
    caps: dict[int, int],
    deadline: float,
    until_exit: bool,
) -> str:
    """Read stdout/stderr into `bufs` (each kept to its cap) until the child exits
    (`until_exit`) or both pipes reach EOF, the deadline passes, or stdout goes over its cap.
    Returns "exit", "timeout" or "output_limit"."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        pidfd = None
        if until_exit:
            try:  # wakes select() when the child exits
                pidfd = os.pidfd_open(proc.pid)
                sel.register(pidfd, selectors.EVENT_READ)
            except (AttributeError, OSError):  # old kernel: poll every 20 ms instead
                pidfd = None
        try:
            while (not _exited(proc.pid)) if until_exit else sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                poll = until_exit and pidfd is None
                for key, _ in sel.select(min(left, 0.02) if poll else left):
                    if key.fd == pidfd:
                        continue
                    eof, over = _read_into(key.fd, bufs[key.fd], caps[key.fd])
                    if eof:
                        sel.unregister(key.fd)
                    if over and key.fd == proc.stdout.fileno():
                        return "output_limit"
            return "exit"
        finally:
            if pidfd is not None:
                os.close(pidfd)


def run_sandboxed(
    program: str, stdin_data: bytes | None = None, limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run `program` (Python source) in a fresh sandboxed interpreter and report what happened.

    Thread-safe: every call has its own process, pipes and working directory, and uses no
    signal handlers, so it runs from any thread (see `run_many`).

    Args:
        program: the source to run as `__main__` (written to main.py in the working dir).
        stdin_data: bytes for the child's stdin (None: /dev/null).
        limits: resource limits (default SandboxLimits()).

    Raises:
        SandboxStartError: the interpreter could not start or the sandbox could not be set up.
    """
    limits = limits or SandboxLimits()
    limits.validate()
    try:
        return _run_in_workdir(program, stdin_data, limits)
    except SandboxStartError as e:
        if "setup failed: uid drop" not in str(e):
            raise
        log.warning("sandbox: cannot switch to a sandbox uid, running without (%s)", e)
        _DISABLED_LAYERS.add("uid")
        return _run_in_workdir(program, stdin_data, limits)


def _run_in_workdir(program: str, stdin_data: bytes | None, limits: SandboxLimits) -> SandboxResult:
    uid = _acquire_uid() if os.geteuid() == 0 and "uid" not in _DISABLED_LAYERS else None
    workdir = tempfile.mkdtemp(prefix="run-", dir=_tmp_root(limits))
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(program)
        if uid is not None:
            os.chown(workdir, uid, uid)
        return _run(workdir, stdin_data, limits, uid)
    finally:
        if uid is not None:
            _release_uid(uid)
        _remove(workdir)


def _run(
    workdir: str, stdin_data: bytes | None, limits: SandboxLimits, uid: int | None
) -> SandboxResult:
    mb = 1024 * 1024
    cfg = {
        "rlimits": [
            ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
            ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
            ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
            ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
            ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
            ("RLIMIT_CORE", 0, 0),
        ],
        "netns": os.geteuid() == 0 and "netns" not in _DISABLED_LAYERS,
        "landlock": "landlock" not in _DISABLED_LAYERS,
        "uid": uid,
        "require_isolation": limits.require_isolation,
        "setup_exit": _SETUP_EXIT,
    }
    argv = [sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(cfg)]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
    stdin: Any = subprocess.DEVNULL
    if stdin_data is not None:  # an unnamed temp file: no pipe to block on, nothing left behind
        stdin = tempfile.TemporaryFile(dir=os.path.dirname(workdir))
        stdin.write(stdin_data)
        stdin.seek(0)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        raise SandboxStartError(f"could not start {sys.executable!r}: {e}") from e
    finally:
        if stdin_data is not None:
            stdin.close()
    cap = limits.max_output_bytes
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        # stderr keeps room for the launcher's ready line, removed in _result
        caps = {proc.stdout.fileno(): cap, proc.stderr.fileno(): cap + 4096}
        try:
            why = _read_pipes(proc, bufs, caps, start + limits.wall_s + limits.grace_s, True)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group, whatever happened
            except (ProcessLookupError, PermissionError):
                pass
            if uid is not None:
                _kill_uid(uid)  # also the processes that left the group with setsid()
            proc.wait()
        # What is still in the pipes: EOF comes at once now, unless a process escaped.
        if _read_pipes(proc, bufs, caps, time.monotonic() + _DRAIN_S, False) == "output_limit":
            why = "output_limit" if why == "exit" else why
        out, err = bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()])
    elapsed = time.monotonic() - start
    return _result(why, out, err, proc.returncode, elapsed, cap)


def _result(why: str, out: bytes, err: bytes, rc: int, elapsed: float, cap: int) -> SandboxResult:
    """Decide the status from what the parent saw; the ready line proves setup finished."""
    if not err.startswith(_READY):
        if why == "timeout":
            raise SandboxStartError(f"sandbox setup did not finish within the wall clock: {err!r}")
        raise SandboxStartError(f"sandbox setup failed (exit {rc}): {err[-2000:]!r}")
    line, _, err = err.partition(b"\n")
    err = err[:cap]
    _note_isolation(json.loads(line[len(_READY) :]))
    status: SandboxStatus
    if why in ("timeout", "output_limit"):
        status = why  # type: ignore[assignment]
    elif rc == -signal.SIGXCPU:
        status = "timeout"
    elif rc == _MEMORY_EXIT:
        status = "memory"
    else:
        status = "ok" if rc == 0 else "crash"
    return SandboxResult(status, out, err, elapsed, rc)


def probe_isolation(limits: SandboxLimits | None = None) -> dict[str, Any]:
    """Run an empty program and return which layers applied: {"uid": int | None,
    "netns": bool, "landlock": Landlock ABI version or 0}."""
    run_sandboxed("pass", None, limits)
    assert _last_report is not None
    return dict(_last_report)


def run_many(
    programs: Sequence[str | tuple[str, bytes | None]],
    limits: SandboxLimits | None = None,
    workers: int = 2,
) -> list[SandboxResult]:
    """Run many programs, `workers` at a time, from a thread pool; results in input order.

    Each item is a program or a (program, stdin_data) pair. Raises the first
    SandboxStartError after every job has finished.
    """
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    jobs = [(p, None) if isinstance(p, str) else p for p in programs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda job: run_sandboxed(job[0], job[1], limits), jobs))
