"""Engines a sweep measures: a real vLLM server (started here or attached by URL) or the simulated
engine (an in-process HTTP server that replays the estimator's timings, always labelled
``simulated``). Both speak the same OpenAI HTTP API and vLLM metric names, so the sweep code does
not know which one it talks to (:class:`.base.EngineServer`). Import the modules themselves
(``engines.base``, ``engines.simulated``, ``engines.vllm``): the last two are loaded only when used.
"""
