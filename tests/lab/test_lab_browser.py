"""The lab page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium): every canvas renders without console errors, every control changes the drawing,
and the numbers the lecture quotes appear. Screenshots go to a pytest tmp dir and to
/tmp/lab_screens/.

Skipped (with the reason) when chromium, chromedriver or selenium is missing; CI installs
them with .ci/install_browser.sh.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # a test-only dependency
    webdriver = None

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (.ci/install_browser.sh)"
    ),
    pytest.mark.skipif(
        CHROMEDRIVER is None,
        reason="chromedriver is not installed (apt-get install chromium-driver)",
    ),
    pytest.mark.skipif(
        webdriver is None, reason="selenium is not installed (pip install selenium)"
    ),
]

SCREENS = Path("/tmp/lab_screens")
CANVASES = ["traj-canvas", "var-canvas", "base-canvas", "clip-canvas", "grpo-canvas", "runs-canvas"]
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run written by the library's trainer (tiny transformer, 2 steps) with its final/."""
    from posttrain.train.common import export_final
    from posttrain.train.configs import BatchConfig, ModelConfig, RLConfig, RunConfig, TaskConfig
    from posttrain.train.policy_gradient import PolicyGradientTrainer

    run_dir = tmp_path_factory.mktemp("lab_browser") / "run"
    cfg = RLConfig(
        model=ModelConfig(spec="tiny:tiny"),
        task=TaskConfig(name="sorting", n=3),
        run=RunConfig(dir=str(run_dir), save_every=10**9, log_rollouts_every=1),
        batch=BatchConfig(prompts_per_step=2, group_size=3),
        steps=10**9,
    )
    cfg.health.stop_when_all_truncated = False  # an untrained model may never stop
    trainer = PolicyGradientTrainer(cfg)
    trainer.step()
    trainer.step()
    trainer.metrics.close()
    export_final(trainer.policy, trainer.tokenizer, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def page(real_run, tmp_path_factory):
    """The lab served on a free port, opened in headless Chromium."""
    from posttrain.lab.server import make_server

    server = make_server("127.0.0.1", 0, run_dir=str(real_run))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1100,1600",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(TIMEOUT)
    driver.get(f"http://127.0.0.1:{server.server_port}/")
    driver.screens = tmp_path_factory.mktemp("screens")
    try:
        for cid in CANVASES:
            wait_for(driver, f"renders of {cid}", lambda c=cid: renders(driver, c) >= 1)
        yield driver
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
        server.lab_state.close()


@pytest.fixture(autouse=True)
def no_console_errors(page):
    """Every test ends with an empty list of console errors."""
    yield
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


# --- helpers ------------------------------------------------------------------------------


def wait_for(driver, what: str, condition, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def renders(driver, cid: str) -> int:
    return int(
        js(driver, "return Number(document.getElementById(arguments[0]).dataset.renders || 0)", cid)
    )


def pixels(driver, cid: str) -> str:
    return js(driver, "return document.getElementById(arguments[0]).toDataURL()", cid)


def text(driver, element_id: str) -> str:
    return js(driver, "return document.getElementById(arguments[0]).textContent", element_id)


def changes_drawing(driver, cid: str, action) -> None:
    """Run `action`; wait for the canvas to redraw; its pixels must differ from before."""
    before, count = pixels(driver, cid), renders(driver, cid)
    action()
    wait_for(driver, f"a redraw of {cid}", lambda: renders(driver, cid) > count)
    wait_for(driver, f"new pixels on {cid}", lambda: pixels(driver, cid) != before, timeout=5)


def set_value(driver, element_id: str, value) -> None:
    """Set an input/select and fire input + change, as a user's edit would."""
    js(
        driver,
        """const e = document.getElementById(arguments[0]);
        if (e.type === 'checkbox') e.checked = arguments[1]; else e.value = arguments[1];
        e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change'));""",
        element_id,
        value,
    )


def click(driver, element_id: str) -> None:
    js(driver, "document.getElementById(arguments[0]).click()", element_id)


def screenshot(driver, section: str, name: str | None = None) -> None:
    element = driver.find_element("id", section)
    js(driver, "arguments[0].scrollIntoView(true)", element)
    path = driver.screens / f"{name or section}.png"
    element.screenshot(str(path))
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)


# --- the canvases -------------------------------------------------------------------------


def test_page_is_self_contained(page):
    origin = js(page, "return location.origin")
    resources = js(page, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(origin) for r in resources), resources


def test_trajectory_steps_to_the_terminal_reward(page, real_run):
    data = js(page, "return window.labTrajectory.data")
    assert data["model"] == str(real_run / "final")  # the --run directory's model
    assert text(page, "traj-readout").startswith("Step 1 of")
    changes_drawing(page, "traj-canvas", lambda: click(page, "traj-step"))
    assert text(page, "traj-readout").startswith("Step 2 of")
    changes_drawing(page, "traj-canvas", lambda: click(page, "traj-reset"))
    changes_drawing(page, "traj-canvas", lambda: click(page, "traj-sample"))  # next seed
    changes_drawing(page, "traj-canvas", lambda: set_value(page, "traj-temp", "0.5"))
    # The lecture's sorting model on a 3-digit prompt, played to the end.
    changes_drawing(page, "traj-canvas", lambda: set_value(page, "traj-prompt", "312="))
    changes_drawing(page, "traj-canvas", lambda: set_value(page, "traj-model", "sorting:3"))
    click(page, "traj-play")
    wait_for(page, "the trajectory's end", lambda: text(page, "traj-readout").startswith("Done"))
    data = js(page, "return window.labTrajectory.data")
    rewards = [s["reward"] for s in data["steps"]]
    assert rewards[:-1] == [0.0] * (len(rewards) - 1) and rewards[-1] == data["reward"]
    assert f"reward {data['reward']:.3f}" in text(page, "traj-readout")
    click(page, "traj-reset")
    click(page, "traj-step")
    screenshot(page, "trajectory")


def test_variance_controls(page):
    changes_drawing(page, "var-canvas", lambda: set_value(page, "var-n", "400"))
    changes_drawing(page, "var-canvas", lambda: set_value(page, "var-p", "0.05"))
    changes_drawing(page, "var-canvas", lambda: set_value(page, "var-baseline", "mean"))
    changes_drawing(page, "var-canvas", lambda: set_value(page, "var-show-none", False))
    changes_drawing(page, "var-canvas", lambda: set_value(page, "var-show-none", True))
    changes_drawing(page, "var-canvas", lambda: click(page, "var-resample"))
    changes_drawing(page, "var-canvas", lambda: set_value(page, "var-baseline", "value"))
    data = js(page, "return window.labVariance.data")
    assert data["n"] == 400 and len(data["none"]["dots"]) == 400
    assert data["with_baseline"]["exact_variance"] < data["none"]["exact_variance"]
    assert "lower" in text(page, "var-readout")
    screenshot(page, "variance")


def test_baseline_two_states(page):
    # The lecture's numbers: 1.15 with the baseline (computed: 1.155), and its printed 4.743
    # quoted next to the computed std of the raw rewards.
    assert "std 1.155 (lecture: 1.15)" in text(page, "base-readout")
    changes_drawing(page, "base-canvas", lambda: set_value(page, "base-on", False))
    off = text(page, "base-readout")
    assert "std 5.323" in off and "The lecture prints 4.743" in off
    changes_drawing(page, "base-canvas", lambda: set_value(page, "base-r00", "15"))
    changes_drawing(page, "base-canvas", lambda: set_value(page, "base-on", True))
    changes_drawing(page, "base-canvas", lambda: set_value(page, "base-b0", "12"))
    changes_drawing(page, "base-canvas", lambda: click(page, "base-lecture"))
    data = js(page, "return window.labBaseline.data")
    assert data["weights"] == [1, -1, -1, 1] and data["lecture_printed_std"]["no_baseline"] == 4.743
    screenshot(page, "baseline")


def test_clip_examples_and_sliders(page):
    assert "objective 0.600" in text(page, "clip-readout")  # A = 0.5, r = 1.35, ε = 0.2
    changes_drawing(page, "clip-canvas", lambda: click(page, "clip-ex2"))
    assert "objective -0.400" in text(page, "clip-readout")  # A = −0.5, r = 0.65
    changes_drawing(page, "clip-canvas", lambda: set_value(page, "clip-eps", "0.3"))
    changes_drawing(page, "clip-canvas", lambda: set_value(page, "clip-adv", "0.8"))
    changes_drawing(page, "clip-canvas", lambda: set_value(page, "clip-ratio", "0.9"))
    changes_drawing(page, "clip-canvas", lambda: click(page, "clip-ex1"))
    assert "objective 0.600" in text(page, "clip-readout")
    assert js(page, "return window.labClip.data.probe.clipped") is True
    screenshot(page, "clip")


def grpo_steps(page) -> int:
    """The mini-GRPO canvas's step once it is idle (no request in flight), else −1."""
    data = js(page, "return window.labGrpo.busy ? null : window.labGrpo.data")
    return data["step"] if data else -1


def set_grpo(page, control: str, value: str, key: str, expected) -> None:
    """Change one control and wait for the rebuilt trainer (step 0, the new setting)."""
    set_value(page, control, value)
    wait_for(
        page,
        f"the rebuild after {control}",
        lambda: js(
            page,
            "const v = window.labGrpo; return !v.busy && v.data.step === 0 && "
            "v.data.settings[arguments[0]] === arguments[1]",
            key,
            expected,
        ),
    )


def test_grpo_controls_rebuild_and_step(page):
    for control, value, key, expected in [
        ("grpo-delta", "raw", "delta", "raw"),
        ("grpo-loss", "naive", "loss", "naive"),
        ("grpo-reward", "inclusion", "reward", "inclusion"),
        ("grpo-epochs", "2", "epochs", 2),
        ("grpo-lr", "0.005", "lr", 0.005),
    ]:
        before = pixels(page, "grpo-canvas")
        set_grpo(page, control, value, key, expected)  # a fresh trainer, back to step 0
        for n in (1, 2):
            click(page, "grpo-step")
            wait_for(page, f"step {n}", lambda n=n: grpo_steps(page) == n)
        assert pixels(page, "grpo-canvas") != before, control
    assert "delta mode raw" in text(page, "grpo-readout")


def test_grpo_reward_rises(page):
    for control, value, key, expected in [
        ("grpo-delta", "normalized", "delta", "normalized"),
        ("grpo-loss", "clipped", "loss", "clipped"),
        ("grpo-reward", "partial", "reward", "partial"),
        ("grpo-epochs", "4", "epochs", 4),
        ("grpo-lr", "0.002", "lr", 0.002),
    ]:
        set_grpo(page, control, value, key, expected)
    click(page, "grpo-play")
    wait_for(
        page,
        "30 training steps",
        lambda: js(page, "return window.labGrpo.data.step") >= 30,
        timeout=90,
    )
    click(page, "grpo-play")  # pause
    wait_for(page, "the pause", lambda: grpo_steps(page) >= 30)
    history = js(page, "return window.labGrpo.data.history")
    rewards = [h["rollout/reward_mean"] for h in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, (first, last)
    table = text(page, "grpo-samples")
    assert all(g["prompt"] in table for g in js(page, "return window.labGrpo.data.samples")[:4])
    screenshot(page, "grpo")
    # The trained policy drives the trajectory canvas too: digits only, then <eos>.
    set_value(page, "traj-prompt", "312=")
    changes_drawing(page, "traj-canvas", lambda: set_value(page, "traj-model", "grpo"))
    steps = js(page, "return window.labTrajectory.data.steps")
    assert all(s["action"]["text"] in "0123456789<eos>" for s in steps)
    click(page, "traj-step")
    click(page, "traj-step")
    screenshot(page, "trajectory", name="trajectory_grpo_policy")


def test_run_viewer_lists_real_rollouts(page, real_run):
    records = [json.loads(x) for x in (real_run / "rollouts.jsonl").read_text().splitlines()]
    last = [r for r in records if r["step"] == max(r["step"] for r in records)]
    shown = js(page, "return document.querySelectorAll('#runs-rollouts .rollout').length")
    assert shown == len(last) == 6
    listing = text(page, "runs-rollouts")
    assert all(r["prompt"] in listing for r in last)
    changes_drawing(page, "runs-canvas", lambda: set_value(page, "runs-metric", "loss/policy"))
    set_value(page, "runs-step", "1")
    wait_for(page, "step 1's rollouts", lambda: text(page, "runs-rollouts").startswith("Step 1:"))
    # The mini-GRPO session's own run directory opens the same way.
    changes_drawing(page, "runs-canvas", lambda: click(page, "runs-grpo"))
    wait_for(
        page,
        "the mini-GRPO run's rollouts",
        lambda: (
            js(page, "return document.querySelectorAll('#runs-rollouts .rollout').length") == 128
        ),
    )
    set_value(page, "runs-dir", str(real_run))
    changes_drawing(page, "runs-canvas", lambda: click(page, "runs-open"))
    set_value(page, "runs-metric", "rollout/reward_mean")
    screenshot(page, "runs")
