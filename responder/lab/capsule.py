"""Install Capsule into the lab from the Capsule module's own Helm chart.

The chart is read from the Go module cache (the same module the controller is built from) and
rendered with `helm template`, so CRDs, RBAC, the CapsuleConfiguration and (0.12) the static
webhook configurations are exactly what the chart produces. The chart itself supports running the
webhooks outside the cluster: `webhooks.service.url` + `webhooks.service.caBundle` make every
clientConfig (admission hooks and the CRD conversion webhook) a URL instead of a Service. For
Capsule >= 0.13 the controller creates `capsule-dynamic-webhook` itself from the CapsuleConfiguration's
`spec.admission.*.client`, which the chart renders from the same values, so the apiserver reaches
the local process at https://127.0.0.1:<port> in both lines.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from responder.errors import LabError
from responder.lab.build import CAPSULE_VERSIONS, capsule_component, module_source_dir

CAPSULE_NAMESPACE = "capsule-system"
CAPSULE_DEPLOYMENT = "capsule-controller-manager"
CAPSULE_SERVICE_ACCOUNT = "capsule"
RELEASE = "capsule"

# Kinds the lab applies; others the chart may render (hooks, cert-manager, monitoring) have no
# meaning without a kubelet or are not served here.
APPLIED_KINDS = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                 "Role", "RoleBinding", "Service", "CapsuleConfiguration", "ValidatingWebhookConfiguration",
                 "MutatingWebhookConfiguration", "Deployment")


def chart_dir(capsule: str) -> Path:
    component = capsule_component(capsule)
    return module_source_dir(component, "github.com/projectcapsule/capsule") / "charts" / "capsule"


# Capsule >= 0.13 rate-limits its own API client (chart default 20 qps / 30 burst). Every object created
# in a tenant namespace costs its webhooks API calls, so seeding 1,000 namespaces would take ~40 min.
# The lab raises it through the chart's own values; this also makes the 0.13+ Tenant finalizer (which
# deletes namespaces itself) a faster adversary, so containment figures measured here are conservative.
LAB_CAPSULE_QPS = 200
LAB_CAPSULE_BURST = 400


def render_chart(capsule: str, helm: Path, *, webhook_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """`helm template` of the chart at this Capsule version, webhooks pointed at `webhook_url`."""
    source = chart_dir(capsule)
    version = CAPSULE_VERSIONS[capsule].lstrip("v")
    with tempfile.TemporaryDirectory(prefix="capsule-chart-") as tmp:
        chart = Path(tmp) / "capsule"
        shutil.copytree(source, chart)
        for path in chart.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        # The release workflow stamps the version; the optional capsule-proxy subchart (off by
        # default) lives in an OCI registry that helm would insist on finding.
        meta["version"] = meta["appVersion"] = version
        meta.pop("dependencies", None)
        (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
        (chart / "Chart.lock").unlink(missing_ok=True)
        values = {
            "crds": {"install": True, "inline": True},
            "certManager": {"generateCertificates": False},
            "tls": {"enableController": False, "create": False},
            "webhooks": {"service": {"url": webhook_url, "caBundle": base64.b64encode(ca_pem).decode()}},
            "manager": {"options": {"clientConnectionQPS": LAB_CAPSULE_QPS, "clientConnectionBurst": LAB_CAPSULE_BURST}},
        }
        values_file = Path(tmp) / "lab-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        proc = subprocess.run([str(helm), "template", RELEASE, str(chart), "--namespace", CAPSULE_NAMESPACE,
                               "--values", str(values_file)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"helm template of Capsule {version}'s chart failed: {proc.stderr.strip()[-800:]}",
                       fix="rebuild the lab (responder lab build) or report the chart change")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict) and d.get("kind")]
    return docs


def objects_to_apply(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's objects the lab applies, in dependency order, hooks left out."""
    keep = []
    for obj in rendered:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if "helm.sh/hook" in annotations or obj["kind"] not in APPLIED_KINDS:
            continue
        keep.append(obj)
    keep.sort(key=lambda o: APPLIED_KINDS.index(o["kind"]))
    return keep


def controller_args(rendered: list[dict[str, Any]]) -> list[str]:
    """The container args the chart gives the controller Deployment."""
    for obj in rendered:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == CAPSULE_DEPLOYMENT:
            containers = obj["spec"]["template"]["spec"]["containers"]
            for container in containers:
                if container.get("args") is not None or container.get("name") == "manager":
                    return [str(a) for a in container.get("args") or []]
    raise LabError("the Capsule chart rendered no capsule-controller-manager Deployment",
                   fix="check the Capsule version's chart")
