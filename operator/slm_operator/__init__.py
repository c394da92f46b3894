"""slm-operator: serve small language models with vLLM, several replicas per GPU.

The operator profiles a model on the target GPU to find its Pareto batch size B* (where decode
throughput stops growing) and how many replicas k* fill the GPU, then schedules k* vLLM pods per
GPU (MPS, time-slicing or DRA) behind one Service. See README.md for the idea and its numbers.
"""

__version__ = "0.1.0"

# NB: the names we share with the cluster (API group, labels, NVIDIA names) are in `constants`.
