"""Fixtures for operator tests: the chart installed by Helm, the operator running as its ServiceAccount."""

from __future__ import annotations

import pytest

from tests.integration.operator_harness import RELEASE, OperatorProcess, install_chart, serviceaccount_kubeconfig


@pytest.fixture(scope="session")
def installed_chart(cluster):
    """``helm install`` of charts/slm-operator (CRDs, RBAC, ServiceAccounts) into slm-system."""
    install_chart(cluster)
    return RELEASE


@pytest.fixture(scope="session")
def operator(cluster, installed_chart, tmp_path_factory):
    work = tmp_path_factory.mktemp("operator")
    kubeconfig = serviceaccount_kubeconfig(cluster, path=work / "kubeconfig")
    proc = OperatorProcess(kubeconfig=kubeconfig, work_dir=work)
    proc.start()
    yield proc
    proc.stop()
