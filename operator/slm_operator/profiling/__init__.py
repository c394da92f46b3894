"""Profiling: measure or estimate a model's throughput/latency/memory curve; select the batch size
(the papers' B*) and the replicas that saturate one GPU (k*).

Public API the operator calls (keyword-only; see docs/profiling.md):

* ``gpus.lookup_gpu(name, *, memory_gib=None) -> GpuSpec``
* ``modelconfig.resolve_model_config(*, model, inline) -> ModelConfig``
* ``estimator.estimate_profile(*, model_config, gpu, workload, slo, epsilon, batch_sizes=None) -> Profile``
* ``runner_local.start_local_profile(*, request, work_dir, python=sys.executable) -> LocalProfileRun``
* ``cache.profile_cache_key(*, request, engine_image) -> str``
* (and ``slm_operator.builders.profiler_job.build_profiler_job`` for the in-cluster Job)

Pure parts (``types``, ``selection``, ``estimator``, ``gpus``, ``modelconfig``, ``cache``,
``calibration``) import neither kopf nor a Kubernetes client; measuring code talks only HTTP to
an OpenAI-compatible engine. NB: ``configmap_sink`` is the one module that uses the Kubernetes
client, imported lazily inside its function, reached only by ``slm-profiler run
--write-configmap`` in the profiler Job. Nothing is imported here, so ``import
slm_operator.profiling`` stays cheap.

Layers, each importing only those below it (the ``profiling-layers`` contract in .importlinter):
``cli``; ``sweep``, ``calibration``, ``runner_local``, ``configmap_sink``; the measuring tools
(``engines``, ``loadgen``, ``metrics``, ``nvml``); ``estimator``, ``results``, ``cache``;
``selection``, ``gpus``, ``modelconfig``, ``processes``; ``types`` at the bottom.
"""
