"""Builders: pure functions that return the child manifests (dicts) of an SLMService.

NB: no kopf and no Kubernetes client here; ``slm_operator.kube`` applies what these return.
"""
