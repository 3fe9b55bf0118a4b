"""The lab's JSON endpoints without a browser: trajectory, mini GRPO, run viewer, HTTP."""

from __future__ import annotations

import http.client
import json
import math
import threading
from pathlib import Path

import pytest
import torch

from posttrain.lab import lab_main
from posttrain.lab.grpo import DELTA_MODES, GrpoSession, GrpoSettings, make_config
from posttrain.lab.runs import RunViewer
from posttrain.lab.server import LabState, call_endpoint, jsonable, make_server
from posttrain.lab.trajectory import sample_trajectory
from posttrain.models.loading import load_model
from posttrain.models.tokenizer import TASK_ALPHABET

# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run directory written by the library's trainer: 2 steps of 2 prompts × 2 samples."""
    from posttrain.train.policy_gradient import PolicyGradientTrainer

    run_dir = tmp_path_factory.mktemp("lab") / "run"
    settings = GrpoSettings(prompts=2, group=2, epochs=1)
    trainer = PolicyGradientTrainer(make_config(settings, run_dir))
    trainer.step()
    trainer.step()
    trainer.metrics.close()
    return run_dir


@pytest.fixture(scope="module")
def server(real_run):
    srv = make_server("127.0.0.1", 0, run_dir=str(real_run))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    srv.lab_state.close()


def request(srv, method: str, path: str, body=None, host: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=60)
    headers = {"Host": host} if host else {}
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    conn.request(method, path, body=data, headers=headers)
    reply = conn.getresponse()
    payload = reply.read()
    conn.close()
    return reply.status, payload


# --- trajectory ---------------------------------------------------------------------------


def test_trajectory_steps_match_a_fresh_forward_pass():
    model, tokenizer = load_model("sorting:3")
    out = sample_trajectory(model, tokenizer, "312=", seed=4, top=3)
    steps = out["steps"]
    assert 1 <= len(steps) <= 4  # 3 digits + <eos>
    assert out["prompt_tokens"] == ["<bos>", "3", "1", "2", "="]
    # Reward 0 at every step but the last, which carries the verifier's reward.
    assert all(s["reward"] == 0.0 for s in steps[:-1])
    assert steps[-1]["reward"] == out["reward"]
    # Each recorded log-prob equals log softmax of one forward pass over the whole sequence,
    # shifted by one (position P − 1 + t scores response token t).
    ids = [1, *tokenizer.convert_tokens_to_ids(list("312="))] + [s["action"]["id"] for s in steps]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (L, V)
    logp = torch.log_softmax(logits.double(), dim=-1)
    for t, s in enumerate(steps):
        expected = logp[4 + t, s["action"]["id"]].item()
        assert s["action"]["logprob"] == pytest.approx(expected, abs=1e-5)
        assert s["action"]["prob"] == pytest.approx(math.exp(expected), abs=1e-6)
        assert s["top"][0]["prob"] == pytest.approx(logp[4 + t].exp().max().item(), abs=1e-6)
    # Same seed, same trajectory.
    again = sample_trajectory(model, tokenizer, "312=", seed=4, top=3)
    assert [s["action"]["id"] for s in again["steps"]] == [s["action"]["id"] for s in steps]


def test_trajectory_reward_only_for_sorting_prompts():
    model, tokenizer = load_model("sorting:3")
    with pytest.raises(ValueError, match="temperature"):
        sample_trajectory(model, tokenizer, "312=", temperature=0.0)
    state = LabState()
    status, out = call_endpoint(
        state, "/api/trajectory", {"model": "sorting:3", "prompt": "312=", "seed": 1}
    )
    assert status == 200 and out["status"] in ("ok", "wrong", "unparsable")
    status, out = call_endpoint(state, "/api/trajectory", {"model": "sorting:3", "prompt": "ab1="})
    assert status == 200 and out["reward"] is None and "no verifier" in out["status"]
    status, out = call_endpoint(state, "/api/trajectory", {"model": "no/such/dir"})
    assert status == 400 and "no/such/dir" in out["error"]


# --- mini GRPO ---------------------------------------------------------------------------


def test_grpo_settings_map_the_lecture_modes():
    assert DELTA_MODES == {"raw": "none", "centered": "mean", "normalized": "group", "max": "max"}
    cfg = make_config(GrpoSettings(delta="centered", loss="unclipped", epochs=2), Path("x"))
    assert (cfg.algo.advantage, cfg.algo.loss, cfg.algo.epochs) == ("mean", "unclipped", 2)
    assert cfg.model.spec == "sorting:3" and cfg.task.n == 3 and cfg.algo.kl_coef == 0.0
    with pytest.raises(ValueError, match="delta"):
        GrpoSettings.from_params({"delta": "baseline"})
    with pytest.raises(ValueError, match="epochs"):
        GrpoSettings.from_params({"epochs": "many"})
    with pytest.raises(ValueError, match="temperature: unknown setting"):
        GrpoSettings.from_params({"temperature": 2})


def test_grpo_session_steps_logs_and_rebuilds():
    session = GrpoSession(GrpoSettings(prompts=2, group=3, epochs=1))
    try:
        state = session.step(2)
        assert [h["step"] for h in state["history"]] == [1, 2]
        assert all(0.0 <= h["rollout/reward_mean"] <= 1.0 for h in state["history"])
        # The latest step's rollouts, grouped by prompt: 2 prompts × 3 responses, and only
        # digits (the output restriction), read from the run's own rollouts.jsonl.
        assert len(state["samples"]) == 2
        assert all(len(g["responses"]) == 3 for g in state["samples"])
        assert all(
            set(r["response"]) <= set("0123456789")
            for g in state["samples"]
            for r in g["responses"]
        )
        lines = (Path(state["run_dir"]) / "rollouts.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [1] * 6 + [2] * 6
        old_dir = Path(state["run_dir"])
        state = session.reset({"delta": "max", "loss": "naive"})
        assert state["step"] == 0 and state["history"] == [] and state["rebuilds"] == 2
        assert state["settings"]["delta"] == "max" and not old_dir.exists()
        with pytest.raises(ValueError, match="count"):
            session.step(0)
    finally:
        session.close()
    assert session.run_dir is None


# --- run viewer --------------------------------------------------------------------------


def test_run_viewer_reads_a_real_run(real_run):
    viewer = RunViewer()
    run = viewer.open({"dir": str(real_run)})
    assert run["metrics"]["rollout/reward_mean"]["step"] == [1, 2]
    assert run["rollout_steps"] == [{"step": 1, "count": 4}, {"step": 2, "count": 4}]
    assert "sorting:3" in run["config_text"]
    out = viewer.rollouts({"dir": str(real_run), "step": 2})
    records = [json.loads(x) for x in (real_run / "rollouts.jsonl").read_text().splitlines()]
    step2 = [r for r in records if r["step"] == 2]
    assert [g["prompt"] for g in out["groups"]] == [step2[0]["prompt"], step2[2]["prompt"]]
    first = out["groups"][0]["rollouts"][0]
    assert first["logprobs"] == step2[0]["logprobs"] and first["reward"] == step2[0]["reward"]
    assert first["advantages"] == step2[0]["advantages"]
    # Tokens decoded with the task tokenizer: token id i is TASK_ALPHABET[i].
    assert first["token_text"] == [TASK_ALPHABET[t] for t in step2[0]["tokens"]]
    with pytest.raises(ValueError, match="step"):
        viewer.rollouts({"dir": str(real_run), "step": 7})


def test_run_viewer_errors_and_partial_lines(tmp_path):
    viewer = RunViewer()
    with pytest.raises(ValueError, match="not a directory"):
        viewer.open({"dir": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="not a run"):
        viewer.open({"dir": str(tmp_path)})
    record = {
        "step": 3,
        "group": 0,
        "prompt": "1=",
        "response": "1",
        "reward": 1.0,
        "tokens": [5],
        "logprobs": [-0.5],
        "ref_logprobs": None,
        "advantages": [0.0],
    }
    # A line still being written (no newline yet) is not read.
    (tmp_path / "rollouts.jsonl").write_text(json.dumps(record) + "\n" + '{"step": 4, "gr')
    run = viewer.open({"dir": str(tmp_path)})
    assert run["rollout_steps"] == [{"step": 3, "count": 1}] and run["metrics"] == {}
    out = viewer.rollouts({"dir": str(tmp_path)})  # default: the latest step
    assert out["step"] == 3 and out["groups"][0]["rollouts"][0]["token_text"] == ["#5"]


# --- HTTP --------------------------------------------------------------------------------


def test_http_serves_page_and_json(server, real_run):
    status, body = request(server, "GET", "/")
    assert status == 200 and b'<canvas id="clip-canvas"' in body
    assert b"http://" not in body and b"https://" not in body  # nothing from the internet
    status, body = request(server, "GET", "/static/lab.js")
    assert status == 200 and b"const Lab" in body
    assert request(server, "GET", "/static/../server.py")[0] == 404
    status, body = request(
        server, "POST", "/api/clip", {"advantage": 0.5, "eps": 0.2, "ratio": 1.35}
    )
    assert status == 200 and json.loads(body)["probe"]["objective"] == pytest.approx(0.6)
    status, body = request(server, "GET", "/api/clip?advantage=-0.5&ratio=0.65")
    assert status == 200 and json.loads(body)["probe"]["objective"] == pytest.approx(-0.4)
    status, body = request(server, "POST", "/api/info", {})
    assert json.loads(body)["run_dir"] == str(real_run.resolve())
    assert request(server, "POST", "/api/clip", b"{not json")[0] == 400
    assert request(server, "POST", "/api/clip", {"eps": 3})[0] == 400
    assert request(server, "POST", "/api/nothing", {})[0] == 404
    # DNS-rebinding guard: a foreign Host header is refused.
    assert request(server, "GET", "/", host="evil.example:80")[0] == 403
    assert request(server, "GET", "/", host="localhost:1")[0] == 200


def test_server_refuses_remote_hosts_and_bad_args(tmp_path, capsys):
    with pytest.raises(ValueError, match="allow-remote"):
        make_server("0.0.0.0", 0)
    assert lab_main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert lab_main(["--run", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert jsonable({"a": [math.nan, 1.0, math.inf]}) == {"a": [None, 1.0, None]}
