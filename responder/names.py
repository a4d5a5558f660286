"""Names of the cluster objects responder owns or guards: one place, imported by the breaker, protect,
the RBAC table and the tests."""

TENANT_CRD = "tenants.capsule.clastix.io"
DEFAULT_CAPSULE_DEPLOYMENT = "capsule-controller-manager"
DEFAULT_CAPSULE_NAMESPACE = "capsule-system"
DEFAULT_VELERO_NAMESPACE = "velero"
RESPONDER_NAMESPACE = "responder-system"
# One writer per cluster: the coordination.k8s.io/v1 Lease every writing responder holds (in RESPONDER_NAMESPACE).
WRITER_LEASE = "responder"
# `responder protect`'s objects.
PROTECT_POLICY = "responder-protect-crds"
PROTECT_BINDING = "responder-protect-crds"
# The breaker's ValidatingAdmissionPolicy (responder.actions.breaker).
HOLD_POLICY = "responder-namespace-hold"
HOLD_BINDING = "responder-namespace-hold"
# The armed hold (`responder protect`): a policy and binding installed ahead, dormant until the breaker
# marks their parameter object, a NamespaceHold (responder's own small cluster-scoped kind), with the incident.
ARMED_HOLD_POLICY = "responder-namespace-hold-armed"
ARMED_HOLD_BINDING = "responder-namespace-hold-armed"
HOLD_PARAM = "responder-namespace-hold"
HOLD_PARAM_GROUP = "responder.dev"
HOLD_PARAM_VERSION = "v1alpha1"
HOLD_PARAM_KIND = "NamespaceHold"
HOLD_PARAM_RESOURCE = "namespaceholds"
HOLD_PARAM_CRD = f"{HOLD_PARAM_RESOURCE}.{HOLD_PARAM_GROUP}"
# The self-arming hold (`responder protect`): a policy whose parameter is the Tenant CRD itself, refusing tenant
# namespace deletes while that CRD is being deleted, absent, or not the one responder last adopted. Its binding for
# the absent case is named so that the API server's refusal (which then carries no message of ours) says why and
# the way out.
SELF_HOLD_POLICY = "responder-namespace-hold-self"
SELF_HOLD_BINDING = "responder-namespace-hold-self.tenant-crd-absent.to-remove-capsule-run-responder-protect-remove-first"
SELF_HOLD_OWNED_BINDING = "responder-namespace-hold-self-owned"
# The tenant record (responder.incident.record): ConfigMaps in RESPONDER_NAMESPACE the guard's leader keeps
# between incidents. An index, and two banks of chunk slots: a writer fills the bank not in use, then switches.
TENANT_RECORD = "responder-tenant-record"
TENANT_RECORD_BANKS = ("a", "b")
TENANT_RECORD_CHUNKS = 8


def tenant_record_chunk(bank: str, index: int) -> str:
    return f"{TENANT_RECORD}-{bank}-{index}"


# Every ConfigMap the record may use: responder's role names exactly these.
TENANT_RECORD_OBJECTS = (TENANT_RECORD,) + tuple(tenant_record_chunk(b, i) for b in TENANT_RECORD_BANKS
                                                 for i in range(TENANT_RECORD_CHUNKS))
