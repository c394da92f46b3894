"""Engines a sweep measures: a real vLLM server (started here or attached by URL) or the simulated
engine (an in-process HTTP server that replays the estimator's timings, always labelled
``simulated``). Both speak the same OpenAI HTTP API and vLLM metric names, so the sweep code does
not know which one it talks to.
"""

from .base import EngineError, EngineServer, find_free_port, port_in_use

__all__ = ["EngineError", "EngineServer", "find_free_port", "port_in_use"]
