"""Progress bars: on by default, throttled off a TTY, switchable by env."""

from __future__ import annotations

import io

from posttrain.run.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_iterates_and_takes_postfix(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_NO_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    out = io.StringIO()
    bar = progress(range(3), desc="train", file=out)
    assert not bar.disable
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss=0.5)
    bar.close()
    assert bar.mininterval == 1.0  # StringIO is not a TTY: at most one redraw a second
    assert "train" in out.getvalue() and "3/3" in out.getvalue()


def test_manual_bar_on_a_tty_redraws_faster():
    bar = progress(total=5, file=_Tty(), disable=False)
    bar.update(2)
    bar.set_postfix({"reward": 1.0})
    assert bar.n == 2 and bar.mininterval == 0.1
    bar.close()


def test_env_and_rank_disable(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_NO_PROGRESS", "1")
    out = io.StringIO()
    bar = progress(range(2), total=2, file=out)
    assert bar.disable and list(bar) == [0, 1]
    bar.set_postfix(loss=1.0)  # still callable when disabled
    bar.close()
    assert out.getvalue() == ""
    monkeypatch.delenv("POSTTRAIN_NO_PROGRESS")
    monkeypatch.setenv("RANK", "1")
    assert progress(range(2), file=io.StringIO()).disable
    assert not progress(range(2), file=io.StringIO(), disable=False).disable
