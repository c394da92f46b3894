# syntax=docker/dockerfile:1
# Two images from one build (docs/install.md):
#   docker build --target operator -t slm-operator:0.1.0 .   the kopf operator (small, non-root)
#   docker build --target profiler -t slm-profiler:0.1.0 .   vLLM + slm-profiler, for profiler Jobs
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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The chart runs as 65532 too (runAsUser); set here so `docker run` is non-root as well.
USER 65532:65532
ENTRYPOINT ["python", "-m", "slm_operator"]

# --- profiler: the engine image the sweep measures, plus our profiler CLI -------------------------
FROM ${VLLM_IMAGE} AS profiler
COPY --from=build /wheels/ /wheels/
# NB: our wheel is py3-none-any, so the engine image's own Python installs it; pip keeps vLLM's pins.
RUN python3 -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["slm-profiler"]
