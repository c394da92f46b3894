"""Starting, finding and stopping the control plane's processes, and the ports they listen on.

Processes are started in their own session so they outlive ``cluster.py up``; each is recorded by
pid together with its executable, so a later ``down`` or ``up`` never mistakes a recycled pid of an
unrelated program for ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"


class PortInUse(RuntimeError):
    """A port the cluster needs is taken by another program."""


def pick_free_ports(*, count: int) -> list[int]:
    """Ports that are free right now, chosen by the kernel, all different."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ensure_port_free(*, port: int, purpose: str) -> None:
    """Raise :class:`PortInUse` naming the port and what needed it, if anything listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # NB: SO_REUSEADDR so a port left in TIME_WAIT by a previous cluster still counts as free,
        # as it does for the Go servers we start (they set the same option).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {HOST}:{port} (for {purpose}) is already in use by another program; "
                    f"free it (`ss -ltnp 'sport = :{port}'` shows who holds it) or choose another port"
                ) from None
            raise


def is_listening(*, port: int) -> bool:
    """Whether something accepts TCP connections on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def spawn(*, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process detached from our session, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )


def is_ours(*, pid: int, executable: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and runs ``executable``.

    NB: compares /proc/<pid>/cmdline's first word, so a pid recycled by an unrelated program
    is not ours; where /proc is missing it falls back to "the pid exists".
    """
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X") and argv0 == executable
    return pid_exists(pid)


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0; a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(*, pid: int, executable: str, grace: float = 10.0) -> str:
    """Stop one of our processes: SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent.

    Returns what happened: "not running", "terminated" or "killed".
    """
    if not is_ours(pid=pid, executable=executable):
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid=pid, executable=executable, timeout=grace):
        return "terminated"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if _wait_gone(pid=pid, executable=executable, timeout=5.0):
        return "killed"
    raise RuntimeError(f"pid {pid} ({executable}) survived SIGKILL")


def _wait_gone(*, pid: int, executable: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # NB: reap it if it is our own child (during a failed `up`), else it would stay a zombie.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if not is_ours(pid=pid, executable=executable):
            return True
        time.sleep(0.05)
    return False


def log_tail(*, path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def rss_mib(*, pid: int) -> float | None:
    """Resident memory of a process in MiB (VmRSS), or None if it is gone; Linux only."""
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(*, pid: int) -> float:
    """User plus system CPU seconds a process has used so far (0 if it is gone); Linux only."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
