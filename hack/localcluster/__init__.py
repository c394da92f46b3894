"""A local Kubernetes control plane with simulated GPU nodes, for development and tests.

``hack/cluster.py`` is the command line; this package holds its parts: the node config
(:mod:`.config`, pure), certificates (:mod:`.pki`), process handling (:mod:`.processes`), a tiny
API client (:mod:`.api`), the KWOK stages (``kwok-stages.yaml``) and the orchestration
(:mod:`.controlplane`, :mod:`.kind`). It also holds the harness the integration tests, the demo
and the benches share: a cluster as its admin sees it (:mod:`.cluster`) and the operator as a
local process beside it (:mod:`.operator`).
"""
