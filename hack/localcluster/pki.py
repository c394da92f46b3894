"""Certificates and keys of the local control plane, made with the ``openssl`` command.

NB: the openssl CLI rather than the ``cryptography`` package, so the cluster needs no Python
dependency beyond PyYAML. ECDSA P-256 keys: generating them takes milliseconds, and every
Kubernetes component accepts them (also for signing ServiceAccount tokens, as ES256).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Subjects of the client certificates: (file stem, common name, organisation or None).
#: NB: kwok gets system:masters because it writes status for nodes and pods it does not own;
#: kube-controller-manager and kube-scheduler get their RBAC-bootstrapped identities.
CLIENTS = (
    ("admin", "slm-admin", "system:masters"),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
    ("kwok", "kwok-controller", "system:masters"),
)


class PkiError(RuntimeError):
    """Making a certificate failed; the message carries openssl's error output."""


@dataclasses.dataclass(frozen=True)
class Pki:
    """Where the files are. Client pairs are ``<dir>/<stem>.crt`` / ``.key`` for each of CLIENTS."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.directory / "front-proxy-ca.crt"

    @property
    def front_proxy_client_cert(self) -> Path:
        return self.directory / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.directory / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, stem: str) -> Path:
        return self.directory / f"{stem}.crt"

    def client_key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"


def make_pki(*, directory: Path, service_ip: str) -> Pki:
    """Create a CA, the API server's serving pair, the client pairs and the ServiceAccount keys.

    Also a separate front-proxy CA and client, which the API server uses to authenticate itself to
    aggregated API servers (metrics-server and the like) and which controllers expect to find.
    """
    if shutil.which("openssl") is None:
        raise PkiError("the `openssl` command is needed to make the cluster's certificates; install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = Pki(directory=directory)
    ca_extensions = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"]
    _issue(pki=pki, stem="ca", subject="/CN=slm-local-ca", extensions=ca_extensions, self_signed=True)
    _issue(pki=pki, stem="front-proxy-ca", subject="/CN=slm-front-proxy-ca", extensions=ca_extensions,
           self_signed=True)
    _issue(pki=pki, stem="front-proxy-client", subject="/CN=front-proxy-client", extensions=_leaf("clientAuth"),
           ca="front-proxy-ca")
    sans = ["DNS:localhost", "IP:127.0.0.1", f"IP:{service_ip}", "DNS:kubernetes", "DNS:kubernetes.default"]
    sans += ["DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    _issue(
        pki=pki,
        stem="apiserver",
        subject="/CN=kube-apiserver",
        extensions=_leaf("serverAuth") + [f"subjectAltName={','.join(sans)}"],
    )
    for stem, common_name, organisation in CLIENTS:
        subject = (f"/O={organisation}" if organisation else "") + f"/CN={common_name}"
        _issue(pki=pki, stem=stem, subject=subject, extensions=_leaf("clientAuth"))
    _run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(pki.sa_key)])
    _run(["openssl", "pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub)])
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return pki


def _leaf(usage: str) -> list[str]:
    return [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]


def _issue(
    *, pki: Pki, stem: str, subject: str, extensions: list[str], self_signed: bool = False, ca: str = "ca"
) -> None:
    # NB: a config file of our own, so the distribution's openssl.cnf cannot add extensions
    # (a CA:TRUE default on a leaf would make Go reject the chain).
    with tempfile.NamedTemporaryFile("w", suffix=".cnf") as cnf:
        cnf.write("[req]\ndistinguished_name=dn\nx509_extensions=ext\n[dn]\n[ext]\n")
        cnf.write("subjectKeyIdentifier=hash\n")
        if not self_signed:
            cnf.write("authorityKeyIdentifier=keyid\n")
        cnf.write("".join(f"{line}\n" for line in extensions))
        cnf.flush()
        argv = ["openssl", "req", "-x509", "-config", cnf.name, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        argv += ["-nodes", "-keyout", str(pki.directory / f"{stem}.key"), "-out", str(pki.directory / f"{stem}.crt")]
        argv += ["-subj", subject, "-days", "3650" if self_signed else "365"]
        if not self_signed:
            argv += ["-CA", str(pki.directory / f"{ca}.crt"), "-CAkey", str(pki.directory / f"{ca}.key")]
        _run(argv)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise PkiError(f"`{' '.join(argv[:3])} ...` failed: {result.stderr.strip()[-800:]}")
