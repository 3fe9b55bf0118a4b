"""`posttrain lab`: a local web page with the lecture's five canvases and a run viewer.

A standard-library `ThreadingHTTPServer` serves the page (plain HTML/JS/CSS from
`posttrain/lab/static`, nothing from the internet) and JSON endpoints that compute every
number with the library's own functions. It binds 127.0.0.1 and answers only requests whose
Host header names a loopback address, unless started with `--allow-remote`.

    posttrain lab [--port 8765] [--run runs/grpo]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Everything an endpoint needs is imported here, up front: lazy imports from two request
# threads at once can meet a half-initialised module (seen as ImportError/KeyError).
from posttrain.lab.canvases import clip_curve, number_param, two_state
from posttrain.lab.grpo import GrpoSession
from posttrain.lab.runs import RunViewer
from posttrain.lab.trajectory import sample_trajectory
from posttrain.lab.variance import variance_explorer
from posttrain.train.common import build_policy
from posttrain.train.configs import ModelConfig

log = logging.getLogger("posttrain.lab")

STATIC_DIR = Path(__file__).resolve().parent / "static"
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-]+\.(html|js|css)")
_CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
MAX_BODY = 1 << 20
DEFAULT_PORT = 8765
LOOPBACK_NAMES = {"localhost"}
MODEL_CACHE_SIZE = 4


class LabState:
    """Everything the endpoints share: loaded models, the mini-GRPO session, the run viewer."""

    def __init__(self, run_dir: str | None = None) -> None:
        self.run_dir = str(Path(run_dir).resolve()) if run_dir else None
        self.grpo = GrpoSession()
        self.runs = RunViewer()
        self.models: dict[str, tuple[Any, Any, threading.Lock]] = {}
        self.models_lock = threading.Lock()

    def default_model(self) -> str:
        """The --run directory's final/ model when there is one, else the tiny task model."""
        if self.run_dir and (Path(self.run_dir) / "final").is_dir():
            return str(Path(self.run_dir) / "final")
        return "tiny:tiny"

    def model(self, spec: str) -> tuple[Any, Any, Any]:
        """(model, tokenizer, lock to hold while using it) for a spec; cached."""
        if spec == "grpo":  # the mini-GRPO canvas's live policy
            self.grpo.ensure()
            return self.grpo.trainer.policy, self.grpo.trainer.tokenizer, self.grpo.lock
        with self.models_lock:
            if spec not in self.models:
                model, tokenizer = build_policy(ModelConfig(spec=spec))
                if len(self.models) >= MODEL_CACHE_SIZE:
                    self.models.pop(next(iter(self.models)))
                self.models[spec] = (model.eval(), tokenizer, threading.Lock())
            return self.models[spec]

    def close(self) -> None:
        """Free the mini-GRPO session's temporary run directory."""
        self.grpo.close()


# ------------------------------------------------------------------------------ endpoints


def _info(state: LabState, params: dict[str, Any]) -> dict[str, Any]:
    suggestions = ["tiny:tiny", "sorting:3", "grpo"]
    if state.run_dir and (Path(state.run_dir) / "final").is_dir():
        suggestions.insert(0, str(Path(state.run_dir) / "final"))
    return {
        "run_dir": state.run_dir,
        "default_model": state.default_model(),
        "model_suggestions": suggestions,
    }


def _trajectory(state: LabState, params: dict[str, Any]) -> dict[str, Any]:
    spec = str(params.get("model") or state.default_model())
    prompt = str(params.get("prompt", "31415="))
    model, tokenizer, lock = state.model(spec)
    with lock:
        out = sample_trajectory(
            model,
            tokenizer,
            prompt,
            temperature=number_param(params, "temperature", 1.0, 0.05, 10.0),
            seed=int(number_param(params, "seed", 0, 0, 2**31 - 1)),
            top=int(number_param(params, "top", 5, 1, 20)),
            reward=str(params.get("reward", "partial")),
        )
    return {"model": spec, **out}


def _grpo_state(state: LabState, params: dict[str, Any]) -> dict[str, Any]:
    state.grpo.ensure()
    return state.grpo.state()


def _grpo_step(state: LabState, params: dict[str, Any]) -> dict[str, Any]:
    return state.grpo.step(int(number_param(params, "count", 1, 1, 20)))


def _grpo_reset(state: LabState, params: dict[str, Any]) -> dict[str, Any]:
    return state.grpo.reset(params.get("settings") or {})


Endpoint = Callable[[LabState, dict[str, Any]], dict[str, Any]]

ENDPOINTS: dict[str, Endpoint] = {
    "/api/info": _info,
    "/api/trajectory": _trajectory,
    "/api/variance": lambda state, p: variance_explorer(p),
    "/api/baseline": lambda state, p: two_state(p),
    "/api/clip": lambda state, p: clip_curve(p),
    "/api/grpo/state": _grpo_state,
    "/api/grpo/step": _grpo_step,
    "/api/grpo/reset": _grpo_reset,
    "/api/runs/open": lambda state, p: state.runs.open(p),
    "/api/runs/rollouts": lambda state, p: state.runs.rollouts(p),
}
"""Path → function(state, params) returning a JSON-ready dict. GET takes query parameters,
POST a JSON object; a ValueError becomes a 400 with its message."""


def jsonable(value: Any) -> Any:
    """`value` with non-finite floats replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def call_endpoint(state: LabState, path: str, params: dict[str, Any]) -> tuple[int, dict]:
    """Run the endpoint at `path`: (HTTP status, JSON body)."""
    endpoint = ENDPOINTS.get(path)
    if endpoint is None:
        return 404, {"error": f"no endpoint {path}"}
    try:
        return 200, jsonable(endpoint(state, params))
    except (ValueError, FileNotFoundError) as e:
        return 400, {"error": str(e)}
    except Exception as e:  # the page shows it; the server keeps serving
        log.exception("endpoint %s failed", path)
        return 500, {"error": f"{type(e).__name__}: {e}"}


def _is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LabHandler(BaseHTTPRequestHandler):
    """Static files and JSON endpoints; `server.lab_state` and `server.allow_remote` are set
    by `make_server`."""

    server_version = "posttrain-lab"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _host_allowed(self) -> bool:
        """DNS-rebinding guard: only loopback Host headers unless --allow-remote."""
        if self.server.allow_remote:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return _is_loopback(name)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if not self._host_allowed():
            return self._json(403, {"error": "host not allowed; start with --allow-remote"})
        url = urlsplit(self.path)
        if url.path.startswith("/api/"):
            status, payload = call_endpoint(
                self.server.lab_state, url.path, dict(parse_qsl(url.query))
            )
            return self._json(status, payload)
        name = "index.html" if url.path == "/" else url.path.removeprefix("/static/")
        if not _STATIC_NAME.fullmatch(name) or not (STATIC_DIR / name).is_file():
            return self._json(404, {"error": f"not found: {url.path}"})
        suffix = name.rsplit(".", 1)[1]
        self._send(200, (STATIC_DIR / name).read_bytes(), _CONTENT_TYPES[suffix])

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        if not self._host_allowed():
            return self._json(403, {"error": "host not allowed; start with --allow-remote"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._json(413, {"error": f"request body over {MAX_BODY} bytes"})
        try:
            params = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as e:
            return self._json(400, {"error": f"request body is not JSON: {e}"})
        if not isinstance(params, dict):
            return self._json(400, {"error": "request body must be a JSON object"})
        status, payload = call_endpoint(self.server.lab_state, urlsplit(self.path).path, params)
        self._json(status, payload)


def make_server(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    run_dir: str | None = None,
    allow_remote: bool = False,
) -> ThreadingHTTPServer:
    """A lab server bound to (host, port); port 0 picks a free one (`server.server_port`).

    Raises ValueError for a non-loopback host without `allow_remote`.
    """
    if not allow_remote and not _is_loopback(host):
        raise ValueError(
            f"--host {host} is not a loopback address; pass --allow-remote to "
            "serve the lab to other machines (it has no authentication)"
        )
    server = ThreadingHTTPServer((host, port), LabHandler)
    server.daemon_threads = True
    server.lab_state = LabState(run_dir)
    server.allow_remote = allow_remote
    return server


def lab_main(argv: Sequence[str] | None = None) -> int:
    """`posttrain lab [--port N] [--run DIR] [--host H --allow-remote]`; returns an exit code."""
    parser = argparse.ArgumentParser(prog="posttrain lab", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free one)")
    parser.add_argument(
        "--run",
        default=None,
        help="a run directory to open in the run viewer "
        "(its final/ model also drives the trajectory canvas)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (loopback only unless --allow-remote)"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host and any Host header (no auth!)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.run is not None and not Path(args.run).is_dir():
        print(f"posttrain lab: --run {args.run}: not a directory", file=sys.stderr)
        return 2
    try:
        server = make_server(args.host, args.port, run_dir=args.run, allow_remote=args.allow_remote)
    except (ValueError, OSError) as e:
        print(f"posttrain lab: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"posttrain lab: serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    # SIGTERM stops the server like Ctrl-C does, so the mini-GRPO temp run dir is removed.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.lab_state.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
