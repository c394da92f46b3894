"""Stopping the child processes the profiler starts (vLLM servers, profiler runs)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM the process group ``process`` leads, SIGKILL it after ``grace_s``. Idempotent.

    NB: the children were started with ``start_new_session=True``; a vLLM server forks engine-core
    workers, so signalling only the leader would leave them holding the device and the port.
    """
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(timeout=10)
