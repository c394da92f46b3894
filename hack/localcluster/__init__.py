"""A local Kubernetes control plane with simulated GPU nodes, for development and tests.

``hack/cluster.py`` is the command line; this package holds its parts: the node config
(:mod:`.config`, pure), certificates (:mod:`.pki`), process handling (:mod:`.processes`), a tiny
API client (:mod:`.api`), the KWOK stages (:mod:`.stages`) and the orchestration
(:mod:`.controlplane`, :mod:`.kind`).
"""
