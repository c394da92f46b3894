"""What the sweep needs from an engine server, and small helpers shared by the engines."""

from __future__ import annotations

import socket
from typing import Protocol

__all__ = ["EngineError", "EngineServer", "find_free_port", "port_in_use"]


class EngineError(RuntimeError):
    """An engine did not start, died, or cannot be reached; the message carries its log tail."""


class EngineServer(Protocol):
    """A running OpenAI-compatible server for one model."""

    #: "vllm" or "simulated": recorded in every result.
    kind: str
    url: str
    #: The model id to send in requests (the server's --served-model-name or path).
    model_name: str

    def log_tail(self, lines: int = 40) -> str: ...

    def stop(self) -> None: ...


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
