"""Profiling: measure or estimate a model's throughput/latency/memory curve and select B* and k*.

Pure parts (``types``, ``selection``, ``estimator``, ``gpus``, ``modelconfig``) import neither kopf
nor a Kubernetes client; measuring code talks only HTTP to an OpenAI-compatible engine.
"""
