"""A minimal Kubernetes API client over urllib, authenticated with the admin client certificate.

NB: the cluster script only creates a handful of objects and polls a few lists; the standard
library does that without starting kubectl per request or importing the kubernetes package. The
benches use it too, for paged lists and (through :meth:`Api.connection`) streamed watches.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: Where objects of the kinds the cluster script creates live, by (apiVersion, kind).
_COLLECTIONS = {
    ("v1", "Node"): "/api/v1/nodes",
    ("resource.k8s.io/v1", "DeviceClass"): "/apis/resource.k8s.io/v1/deviceclasses",
    ("resource.k8s.io/v1", "ResourceSlice"): "/apis/resource.k8s.io/v1/resourceslices",
}


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Api:
    """Talks to one API server as the admin user."""

    def __init__(self, *, server: str, ca_cert: Path, client_cert: Path, client_key: Path) -> None:
        self.server = server.rstrip("/")
        self._context = ssl.create_default_context(cafile=str(ca_cert))
        self._context.load_cert_chain(str(client_cert), str(client_key))
        # NB: no proxy, whatever the environment says: urllib would send 127.0.0.1 through one.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._context)
        )

    def request(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json", timeout: float = 5.0
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with self._opener.open(req, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except ValueError:
                pass
            raise ApiError(e.code, detail) from None
        content = payload.decode(errors="replace")
        try:
            return json.loads(content)
        except ValueError:
            return content

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, obj: dict[str, Any]) -> Any:
        """POST an object to its collection (only the kinds the cluster script needs)."""
        key = (obj["apiVersion"], obj["kind"])
        if key not in _COLLECTIONS:
            raise ValueError(f"no collection known for {key}; add it to _COLLECTIONS")
        return self.request("POST", _COLLECTIONS[key], body=obj)

    def list_all(self, path: str, *, page: int = 500, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every item of a collection, paged (so a list of thousands of pods is not one huge answer)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            sep = "&" if "?" in path else "?"
            answer = self.request("GET", f"{path}{sep}limit={page}" + (f"&continue={token}" if token else ""),
                                  timeout=timeout)
            items += answer["items"]
            token = answer["metadata"].get("continue") or ""
            if not token:
                return items

    def connection(self, *, timeout: float = 30.0) -> http.client.HTTPSConnection:
        """A raw keep-alive connection with the same credentials: for watches and bursts of requests."""
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        return http.client.HTTPSConnection(host, int(port), context=self._context, timeout=timeout)


def admin_api(*, server: str, pki_dir: Path) -> Api:
    """An :class:`Api` as the admin user of the local control plane whose certificates are in ``pki_dir``."""
    return Api(server=server, ca_cert=pki_dir / "ca.crt", client_cert=pki_dir / "admin.crt",
               client_key=pki_dir / "admin.key")


def token_kubeconfig(*, admin_kubeconfig: Path, account: str, token: str) -> dict[str, Any]:
    """A kubeconfig for the admin kubeconfig's cluster that authenticates with ``token``.

    The operator runs beside the local cluster (KWOK runs no containers) as the chart's
    ServiceAccount, with a TokenRequest token: a missing RBAC rule then fails as it would in a pod.
    """
    import yaml  # NB: the rest of this module needs only the standard library

    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": account}}],
    }
