"""The sandbox that runs model code (RELIABILITY.md VER-1, VER-2, VER-3, VER-5).

Every test checks what the *parent* observes: status, bytes, time, and that no process or
file of the run is left behind.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time

import pytest

from posttrain.tasks import sandbox
from posttrain.tasks.sandbox import (
    SandboxLimits,
    SandboxStartError,
    probe_isolation,
    run_many,
    run_sandboxed,
    sandbox_pids,
)

LIMITS = SandboxLimits(wall_s=0.75, grace_s=0.25)
IS_ROOT = os.geteuid() == 0


def assert_nothing_left() -> None:
    """No child of this process and no live process under a sandbox uid remains."""
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    assert sandbox_pids() == []


@pytest.fixture(scope="module")
def layers() -> dict:
    return probe_isolation(LIMITS)


def test_ok_run_passes_stdin_and_stdout() -> None:
    res = run_sandboxed("import sys\nprint(sys.stdin.read()[::-1])", b"abc", LIMITS)
    assert (res.status, res.stdout, res.returncode) == ("ok", b"cba\n", 0)
    assert res.stderr == b""  # the launcher's ready line is removed
    no_stdin = run_sandboxed("import sys\nprint(repr(sys.stdin.read()))", None, LIMITS)
    assert no_stdin.stdout == b"''\n"


def test_exit_codes_are_reported_not_trusted() -> None:
    crash = run_sandboxed("raise ValueError('boom')", None, LIMITS)
    assert (crash.status, crash.returncode) == ("crash", 1)
    assert b"ValueError: boom" in crash.stderr
    abort = run_sandboxed("import os\nos.abort()", None, LIMITS)
    assert (abort.status, abort.returncode) == ("crash", -6)  # SIGABRT


def test_wall_clock_is_enforced_by_the_parent() -> None:
    programs = [
        "while True: pass",
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass",
        # one long C call that no in-process alarm could interrupt: catastrophic backtracking
        "import re\nre.match(r'(a*)*b', 'a' * 64)",
        "import time\ntime.sleep(3600)",
    ]
    for res in run_many(programs, LIMITS, workers=2):
        assert (res.status, res.returncode) == ("timeout", -9)  # -9: our SIGKILL
        assert LIMITS.wall_s <= res.wall_s < LIMITS.wall_s + 1.0
    assert_nothing_left()


def test_memory_limit() -> None:
    res = run_sandboxed("x = bytearray(10 * 1024**3)", None, LIMITS)  # 10 GiB
    assert res.status == "memory"


def test_stdout_over_cap_is_cut_and_parent_memory_stays_bounded() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    res = run_sandboxed("print('x' * 100_000_000)", None, LIMITS)  # 100 MB
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert res.status == "output_limit"
    assert res.stdout == b"x" * LIMITS.max_output_bytes
    assert grown_mib < 20


def test_stderr_is_capped_but_drained() -> None:
    res = run_sandboxed(
        "import sys\nsys.stderr.write('e' * 10_000_000)\nprint('done')", None, LIMITS
    )
    assert (res.status, res.stdout) == ("ok", b"done\n")
    assert res.stderr == b"e" * LIMITS.max_output_bytes


def test_file_size_and_open_files_limits() -> None:
    program = (
        "f = open('big', 'wb')\n"
        "try:\n"
        "    for _ in range(1000): f.write(b'x' * 10**6)\n"  # 1 GB
        "except OSError as e: print('stopped', e.errno, f.tell())\n"
        "fs = []\n"
        "try:\n"
        "    while True: fs.append(open('main.py'))\n"
        "except OSError as e: print('files', e.errno)\n"
    )
    res = run_sandboxed(program, None, LIMITS)
    # EFBIG = 27 at exactly max_file_bytes; EMFILE = 24
    assert res.stdout == f"stopped 27 {LIMITS.max_file_bytes}\nfiles 24\n".encode()


def test_environment_is_minimal_and_secrets_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = "sentinel-7f3a9c0e51"
    monkeypatch.setenv("POSTTRAIN_SECRET_SENTINEL", sentinel)
    program = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "for path in ('/proc/%d/environ' % os.getppid(), '/proc/self/environ'):\n"
        "    try: print(open(path, 'rb').read())\n"
        "    except OSError as e: print('denied', e.errno)\n"
    )
    res = run_sandboxed(program, None, LIMITS)
    assert res.status == "ok"
    assert sentinel.encode() not in res.stdout + res.stderr
    assert res.stdout.splitlines()[0] == b"['HOME', 'LANG', 'PATH']"


def test_no_inherited_descriptors() -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)  # even a descriptor marked inheritable must not reach it
    try:
        inode = os.fstat(r).st_ino
        program = (
            "import os\n"
            "inodes = []\n"
            "for fd in range(3, 256):\n"
            "    try: inodes.append(os.fstat(fd).st_ino)\n"
            "    except OSError: pass\n"
            "print(inodes)\n"
        )
        res = run_sandboxed(program, None, LIMITS)
        assert res.status == "ok"
        assert str(inode).encode() not in res.stdout
    finally:
        os.close(r)
        os.close(w)


def test_working_dirs_are_removed(tmp_path) -> None:
    limits = SandboxLimits(wall_s=0.75, grace_s=0.25, tmp_root=str(tmp_path))
    prog = "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\nprint(os.getcwd())"
    res = run_sandboxed(prog, b"input", limits)
    assert res.status == "ok"
    assert os.path.dirname(res.stdout.decode().strip()) == str(tmp_path)
    run_sandboxed("while True: pass", None, limits)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop needs root")
def test_child_runs_as_an_unprivileged_sandbox_uid() -> None:
    program = (
        "import os\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
        "try: os.setuid(0)\n"
        "except PermissionError: print('no way back')\n"
    )
    res = run_sandboxed(program, None, LIMITS)
    ids, back = res.stdout.decode().splitlines()
    uid, gid, groups = ids.split(maxsplit=2)
    assert int(uid) == int(gid) and 60100 <= int(uid) < 60100 + 256
    assert (groups, back) == ("[]", "no way back")


def test_fork_bomb_that_leaves_the_group_is_contained() -> None:
    program = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0: os.setsid()\n"
        "    except OSError: pass\n"
    )
    start = time.monotonic()
    res = run_sandboxed(program, None, LIMITS)
    assert res.status == "timeout"
    assert time.monotonic() - start < LIMITS.wall_s + 1.0
    assert_nothing_left()


def test_detached_grandchild_does_not_hold_the_run_open() -> None:
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0: time.sleep(3600)\n"  # keeps the stdout/stderr pipes open
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    res = run_sandboxed(program, None, LIMITS)
    assert (res.status, res.stdout) == ("ok", b"parent done\n")
    assert res.wall_s < LIMITS.wall_s  # we did not wait for the wall clock to get EOF
    assert_nothing_left()


def test_files_outside_the_working_dir_are_refused_or_removed() -> None:
    path = f"/tmp/posttrain_sandbox_escape_{os.getpid()}"
    res = run_sandboxed(f"open({path!r}, 'w').write('x')", None, LIMITS)
    assert res.status in ("ok", "crash")
    assert not os.path.exists(path)


def test_loopback_listener_is_unreachable(layers: dict) -> None:
    if not (layers["netns"] or layers["landlock"] >= 4):
        pytest.skip("no network namespace and no Landlock >= 4 on this machine")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=0.3); print('connected')\n"
            "except OSError as e: print('refused')\n"
        )
        res = run_sandboxed(program, None, LIMITS)
    assert res.stdout == b"refused\n"


def test_run_many_from_a_non_main_thread_keeps_order() -> None:
    programs: list = [f"print({i})" for i in range(6)] + [
        "while True: pass",
        ("print(input())", b"hi"),
    ]
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(res=run_many(programs, LIMITS, workers=2)))
    thread.start()
    thread.join(timeout=30)
    results = box["res"]
    assert [r.stdout for r in results[:6]] == [f"{i}\n".encode() for i in range(6)]
    assert results[6].status == "timeout"
    assert results[7].stdout == b"hi\n"
    assert_nothing_left()


def test_best_effort_isolation_is_logged_once_and_can_be_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox, "_DISABLED_LAYERS", {"landlock", "netns"})
    monkeypatch.setattr(sandbox, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="posttrain.tasks.sandbox"):
        run_sandboxed("pass", None, LIMITS)
        run_sandboxed("pass", None, LIMITS)
    assert [r.message.startswith("sandbox isolation is best-effort") for r in caplog.records] == [
        True
    ]
    with pytest.raises(SandboxStartError, match="isolation required"):
        run_sandboxed("pass", None, SandboxLimits(require_isolation=True))


@pytest.mark.skipif(not IS_ROOT, reason="the uid-only fallback needs root")
def test_uid_only_fallback_still_contains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Landlock and namespaces the uid drop alone must still reap every process,
    remove files written to /tmp, and keep the usual stdlib modules importable."""
    monkeypatch.setattr(sandbox, "_DISABLED_LAYERS", {"landlock", "netns"})
    monkeypatch.setattr(sandbox, "_warned", True)
    path = f"/tmp/posttrain_sandbox_fallback_{os.getpid()}"
    res = run_sandboxed(
        f"import math, random\nopen({path!r}, 'w').write('x')\nprint(math.gcd(12, 18))",
        None,
        LIMITS,
    )
    assert (res.status, res.stdout) == ("ok", b"6\n")
    assert not os.path.exists(path)
    bomb = "import os\nwhile True:\n    try:\n        if os.fork() == 0: os.setsid()\n    except OSError: pass\n"
    assert run_sandboxed(bomb, None, LIMITS).status == "timeout"
    assert_nothing_left()


def test_start_failure_is_an_infrastructure_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python3")
    with pytest.raises(SandboxStartError, match="could not start"):
        run_sandboxed("pass", None, LIMITS)


def test_limits_validate_names_the_field() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1).validate()
    with pytest.raises(ValueError, match="wall_s"):
        run_sandboxed("pass", None, SandboxLimits(wall_s=0))


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop needs root")
def test_a_uid_that_cannot_be_used_falls_back_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. a user namespace that does not map 60100+: warn, then run without the uid drop."""
    setuid = 'os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])'
    assert setuid in sandbox._LAUNCHER
    broken = sandbox._LAUNCHER.replace(setuid, "raise PermissionError('simulated: unmapped uid')")
    monkeypatch.setattr(sandbox, "_LAUNCHER", broken)
    monkeypatch.setattr(sandbox, "_DISABLED_LAYERS", set())
    with caplog.at_level(logging.WARNING, logger="posttrain.tasks.sandbox"):
        first = run_sandboxed("import os\nprint(os.getuid())", None, LIMITS)
        second = run_sandboxed("import os\nprint(os.getuid())", None, LIMITS)
    assert (first.stdout, second.stdout) == (b"0\n", b"0\n")
    assert sum("cannot switch to a sandbox uid" in r.message for r in caplog.records) == 1
    assert sandbox._DISABLED_LAYERS == {"uid"}
