"""Fixtures for operator tests: the chart installed by Helm, the operator running as its ServiceAccount."""

from __future__ import annotations

import pytest

from tests.integration.operator_harness import (
    OPERATOR_NAMESPACE,
    RELEASE,
    ROOT,
    OperatorProcess,
    serviceaccount_kubeconfig,
)


@pytest.fixture(scope="session")
def installed_chart(cluster):
    """``helm install`` of charts/slm-operator (CRDs, RBAC, ServiceAccounts) into slm-system."""
    status = cluster.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, check=False)
    if status.returncode != 0:
        cluster.helm("install", RELEASE, str(ROOT / "charts" / "slm-operator"), "-n", OPERATOR_NAMESPACE,
                     "--create-namespace", "--wait", "--timeout", "120s")
    cluster.kubectl("wait", "--for=condition=Established", "crd/slmservices.slm.pareto.dev", "--timeout=60s")
    return RELEASE


@pytest.fixture(scope="session")
def operator(cluster, installed_chart, tmp_path_factory):
    work = tmp_path_factory.mktemp("operator")
    kubeconfig = serviceaccount_kubeconfig(cluster, account="slm-operator", namespace=OPERATOR_NAMESPACE,
                                           path=work / "kubeconfig")
    proc = OperatorProcess(kubeconfig=kubeconfig, work_dir=work)
    proc.start()
    yield proc
    proc.stop()
