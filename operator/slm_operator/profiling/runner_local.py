"""Run a profile in a local subprocess (``python -m slm_operator.profiling.cli run``), non-blocking.

The operator uses this where it profiles without a cluster Job (local demo, simulated engine):
:func:`start_local_profile` returns at once; :meth:`LocalProfileRun.poll` says whether the
Profile is ready, :meth:`LocalProfileRun.progress` reads the progress file the sweep rewrites,
:meth:`LocalProfileRun.cancel` ends the child (and only it: it runs in its own process group).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from slm_operator.errors import ProfilingFailed

from .processes import stop_process_group
from .types import Profile, ProfileRequest

__all__ = ["LocalProfileRun", "start_local_profile"]


class LocalProfileRun:
    """Handle of one running (or finished) local profile."""

    def __init__(self, *, process: subprocess.Popen[bytes], work_dir: pathlib.Path) -> None:
        self.process = process
        self.work_dir = work_dir
        self.output = work_dir / "profile.json"
        self.progress_file = work_dir / "progress.json"
        self.log_file = work_dir / "profiler.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_file.open("rb") as fh:
                return b"".join(collections.deque(fh, maxlen=lines)).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def poll(self) -> Profile | None:
        """``None`` while running; the Profile once done. Raises
        :class:`~slm_operator.errors.ProfilingFailed` (exit code and log tail) on failure."""
        code = self.process.poll()
        if code is None:
            return None
        if code != 0:
            raise ProfilingFailed(f"slm-profiler run exited with code {code}. Log tail:\n{self.log_tail()}")
        try:
            return Profile.from_dict(json.loads(self.output.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ProfilingFailed(f"slm-profiler run exited 0 but {self.output} is unusable: {exc}") from None

    def progress(self) -> dict[str, Any] | None:
        """The latest progress document (phase, point, of, elapsedSeconds, message), if any yet."""
        try:
            document = json.loads(self.progress_file.read_text())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def cancel(self, *, grace_s: float = 10.0) -> None:
        stop_process_group(self.process, grace_s=grace_s)


def start_local_profile(
    *,
    request: ProfileRequest,
    work_dir: str,
    python: str = sys.executable,
    extra_args: Sequence[str] = (),
) -> LocalProfileRun:
    """Write the request into ``work_dir`` and start ``slm-profiler run`` on it; returns at once."""
    folder = pathlib.Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    request_file = folder / "request.json"
    request_file.write_text(json.dumps(request.to_dict(), indent=2))
    run = [
        python, "-m", "slm_operator.profiling.cli", "run",
        "--request", str(request_file),
        "--output", str(folder / "profile.json"),
        "--progress", str(folder / "progress.json"),
        "--work-dir", str(folder),
        *extra_args,
    ]
    for stale in ("profile.json", "progress.json"):
        (folder / stale).unlink(missing_ok=True)
    log = (folder / "profiler.log").open("ab")
    try:
        process = subprocess.Popen(
            run, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()
    return LocalProfileRun(process=process, work_dir=folder)
