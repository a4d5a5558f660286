"""Load cluster credentials the way kubectl does, through the official `kubernetes` package.

--kubeconfig names one file (no merging); otherwise $KUBECONFIG is a merged list of paths; otherwise
~/.kube/config; otherwise the in-cluster service account. Credentials are loaded into a private
Configuration (never the package's global default) before any UI starts, because exec plugins may
prompt on the terminal.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

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
    # A digest of the TLS material as read at load time (CA, client certificate and key contents,
    # verification on/off): two loads with the same value build equivalent SSLContexts, so a client
    # keeps its connections across a reload unless this changed. "" when unknown.
    tls_identity: str = field(default="", repr=False)

    @property
    def display_server(self) -> str:
        """The server URL for messages, the journal and reports: a password in it masked, as kubectl does."""
        return mask_url_password(self.server)


def mask_url_password(url: str) -> str:
    """`https://bob:secret@host:6443` -> `https://bob:***@host:6443`; other URLs unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            entries = data.get(section) or []
            if not isinstance(entries, list):
                raise ConfigError(f"kubeconfig {path}: {section} is not a list",
                                  fix=f"write {section} as a list of {{name: ..., {inner}: {{...}}}} entries")
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get(inner, {}), dict):
                    name = entry.get("name") if isinstance(entry, dict) else None
                    raise ConfigError(f"kubeconfig {path}: {section}[{i}]" + (f" ({name})" if name else "")
                                      + f".{inner} is not a mapping",
                                      fix=f"write it as {{name: ..., {inner}: {{...}}}}, as `kubectl config view` shows")


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


def _exec_command(config_file: str, context_name: str) -> str | None:
    """The exec plugin's command of the context's user (kubectl's merge: the first file naming the
    context, then the first naming its user), or None."""
    docs = [yaml.safe_load(Path(path).read_text()) or {} for path in config_file.split(os.pathsep)]

    def first(section: str, name: str) -> dict:
        for doc in docs:
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") == name:
                    return entry
        return {}

    user = (first("contexts", context_name).get("context") or {}).get("user")
    exec_spec = (first("users", user).get("user") or {}).get("exec") if user else None
    return str(exec_spec.get("command") or "?") if isinstance(exec_spec, dict) else None


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
        plugin = _exec_command(config_file, context_name)
        if plugin and not cfg.api_key and not (cfg.cert_file and cfg.key_file):
            # The package logs an exec plugin's failure and goes on without credentials; every request
            # would then be refused (401) and blamed on the credentials, not on the plugin.
            raise ConfigError(f"the exec credential plugin {plugin!r} of context {context_name!r} gave no credentials "
                              "(it failed: see its message above)",
                              fix=f"run `{plugin}` by hand to see why (login expired? not on PATH?), then try again")

    if not cfg.host or not cfg.host.startswith(("https://", "http://")):
        raise ConfigError(f"context {context_name!r} has no valid cluster server URL ({cfg.host!r})",
                          fix="set clusters[].cluster.server to https://HOST:PORT")

    cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else None
    # Read before the context is built: if a file is rewritten in between, the digest is the older
    # content, so the next reload sees a change (one extra rebuild) rather than miss one.
    tls_identity = _tls_identity(cfg.ssl_ca_cert if cfg.verify_ssl else None, cert, bool(cfg.verify_ssl))

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
        return clean_authorization(cfg.get_api_key_with_prefix("BearerToken")
                                   or cfg.get_api_key_with_prefix("authorization"))

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
        tls_identity=tls_identity,
    )


def clean_authorization(value: str | None) -> str | None:
    """The Authorization header value without surrounding whitespace, or None when no credential is
    left. `kubectl create token SA > file` writes a trailing newline, and the `kubernetes` package
    reads a tokenFile as is (client-go trims it); a newline in a header value is refused by the HTTP
    libraries, whose errors quote the value, i.e. the token."""
    if not value:
        return None
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if not credential:
        return None if scheme.lower() == "bearer" else scheme or None
    return f"{scheme} {credential}"


def _tls_identity(ca_file: str | None, cert: tuple[str, str] | None, verify: bool) -> str:
    digest = hashlib.sha256(b"verify" if verify else b"no-verify")
    for path in (ca_file, *(cert or ())):
        digest.update(b"\0")
        if not path:
            continue
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"unreadable:" + path.encode())
    return digest.hexdigest()
