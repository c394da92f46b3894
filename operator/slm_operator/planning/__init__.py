"""Planning: turn a profile, an SLMService and the cluster's GPU inventory into a placement plan.

Everything here is pure: no kopf, no Kubernetes client, no I/O. Inputs are plain data.
"""
