"""Load cluster credentials the way kubectl does, through the official `kubernetes` package.

--kubeconfig names one file (no merging); otherwise $KUBECONFIG is a merged list of paths; otherwise
~/.kube/config; otherwise the in-cluster service account. Credentials are loaded into a private
Configuration (never the package's global default) before any UI starts, because exec plugins may
prompt on the terminal.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from kubernetes import config as k8s_config
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException

from responder.errors import ConfigError

DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"


@dataclass
class ClusterAccess:
    """Everything needed to talk to one API server as one identity."""

    server: str
    context: str | None
    ssl_context: ssl.SSLContext  # httpx's (httpcore sets its ALPN protocols on it per connection)
    # A fresh context with the same CA and client certificate, for a transport that sets its own ALPN.
    new_ssl_context: Callable[[], ssl.SSLContext]
    cert: tuple[str, str] | None
    tls_server_name: str | None
    # Returns the current "Authorization" header value (may run an exec plugin); None for cert auth.
    authorization: Callable[[], str | None]
    # Re-reads the kubeconfig: used once after a 401 (rotated tokens, expired exec credentials).
    reload: Callable[[], "ClusterAccess"] = field(repr=False)
    source: str = ""


def _kubeconfig_paths(kubeconfig: str | None) -> tuple[str | None, str]:
    """Resolve which kubeconfig to read; returns (config_file or None for in-cluster, description)."""
    if kubeconfig:
        if not Path(kubeconfig).is_file():
            raise ConfigError(f"kubeconfig {kubeconfig!r} does not exist or is not a file",
                              fix="pass --kubeconfig with the path of a readable kubeconfig file")
        return kubeconfig, kubeconfig
    env = os.environ.get("KUBECONFIG", "")
    paths = [p for p in env.split(os.pathsep) if p]
    if paths:
        existing = [p for p in paths if Path(p).is_file()]
        if not existing:
            raise ConfigError(f"none of the files in KUBECONFIG exist: {env}",
                              fix="point KUBECONFIG at a readable kubeconfig, or pass --kubeconfig")
        return os.pathsep.join(existing), f"KUBECONFIG={env}"
    if DEFAULT_KUBECONFIG.is_file():
        return str(DEFAULT_KUBECONFIG), str(DEFAULT_KUBECONFIG)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None, "in-cluster service account"
    raise ConfigError("no kubeconfig found (no --kubeconfig, KUBECONFIG unset, no ~/.kube/config, not in a pod)",
                      fix="pass --kubeconfig FILE or set KUBECONFIG; for the local lab run `eval $(responder lab env)`")


def _check_yaml(config_file: str) -> None:
    for path in config_file.split(os.pathsep):
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"kubeconfig {path} is not valid YAML{where}",
                              fix="repair the file or point --kubeconfig at another one") from None
        except OSError as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror}",
                              fix="check the path and its permissions") from None
        if not isinstance(data, dict):
            raise ConfigError(f"kubeconfig {path} is not a kubeconfig (expected a mapping with clusters, users, contexts)",
                              fix="point --kubeconfig at a kubeconfig file")


def list_contexts(kubeconfig: str | None = None) -> tuple[list[str], str | None]:
    """Context names and the current one, from the resolved kubeconfig."""
    config_file, _ = _kubeconfig_paths(kubeconfig)
    if config_file is None:
        return [], None
    _check_yaml(config_file)
    # Read the contexts ourselves (kubectl's merge: the first file to name a context or a
    # current-context wins): the package's list_kube_config_contexts refuses a kubeconfig without
    # current-context even when --context names one.
    names: list[str] = []
    current: str | None = None
    for path in config_file.split(os.pathsep):
        data = yaml.safe_load(Path(path).read_text()) or {}
        for ctx in data.get("contexts") or []:
            name = ctx.get("name") if isinstance(ctx, dict) else None
            if isinstance(name, str) and name and name not in names:
                names.append(name)
        if not current and isinstance(data.get("current-context"), str) and data["current-context"]:
            current = data["current-context"]
    return names, current


def load_cluster_access(kubeconfig: str | None = None, context: str | None = None) -> ClusterAccess:
    """Load credentials; raises ConfigError with the problem and the fix."""
    config_file, source = _kubeconfig_paths(kubeconfig)
    cfg = Configuration()
    if config_file is None:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except ConfigException as exc:
            raise ConfigError(f"in-cluster configuration failed: {exc}",
                              fix="run inside a pod with a service account, or pass --kubeconfig") from None
        context_name = None
    else:
        _check_yaml(config_file)
        names, current = list_contexts(kubeconfig)
        context_name = context or current
        if context and context not in names:
            raise ConfigError(f"context {context!r} is not in {source} (contexts: {', '.join(names) or 'none'})",
                              fix="pass --context with one of the listed names (kubectl config get-contexts)")
        if not context_name:
            raise ConfigError(f"{source} has no current-context and no --context was given",
                              fix="pass --context NAME or run `kubectl config use-context NAME`")
        try:
            k8s_config.load_kube_config(config_file=config_file, context=context_name,
                                        client_configuration=cfg, persist_config=False)
        except ConfigException as exc:
            raise ConfigError(f"kubeconfig context {context_name!r} in {source} is unusable: {exc}",
                              fix="repair the context's cluster and user entries") from None
        except Exception as exc:  # exec plugin failures surface as various errors
            raise ConfigError(f"loading credentials for context {context_name!r} failed: {type(exc).__name__}: {exc}",
                              fix="check the user's exec plugin or certificate files") from None

    if not cfg.host or not cfg.host.startswith(("https://", "http://")):
        raise ConfigError(f"context {context_name!r} has no valid cluster server URL ({cfg.host!r})",
                          fix="set clusters[].cluster.server to https://HOST:PORT")

    cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else None

    def new_ssl_context() -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl and cfg.ssl_ca_cert \
                else ssl.create_default_context()
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"the certificate authority of context {context_name!r} in {source} cannot be loaded "
                              f"({exc}): not a PEM certificate",
                              fix="set clusters[].cluster.certificate-authority(-data) to the cluster's CA "
                                  "certificate") from None
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            try:
                ctx.load_cert_chain(*cert)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"the client certificate and key of context {context_name!r} in {source} cannot "
                                  f"be loaded ({exc}): not a PEM certificate with its matching private key",
                                  fix="set users[].user.client-certificate(-data) and client-key(-data) to a "
                                      "matching PEM pair") from None
        return ctx

    ssl_context = new_ssl_context()  # checked now: bad input fails before anything starts

    def authorization() -> str | None:
        # Runs refresh_api_key_hook (exec plugins) when the token expired.
        return cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")

    return ClusterAccess(
        server=cfg.host.rstrip("/"),
        context=context_name,
        ssl_context=ssl_context,
        new_ssl_context=new_ssl_context,
        cert=cert,
        tls_server_name=getattr(cfg, "tls_server_name", None),
        authorization=authorization,
        reload=lambda: load_cluster_access(kubeconfig, context),
        source=source,
    )
