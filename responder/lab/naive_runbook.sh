#!/usr/bin/env bash
# The manual runbook, automated naively: the baseline `responder drill --bench` compares responder with.
#
# Watch the Tenant CRD with kubectl; on the first event that carries a deletionTimestamp (or the
# DELETED event), list the tenant namespaces and remove each one's ownerReferences with one
# `kubectl patch` process per namespace, one after the other (what an on-call engineer's loop does).
# Prints `ready` once the watch is established, then `detected <epoch>`, one line per patch, `done <epoch>`.
# Uses $KUBECONFIG; $KUBECTL overrides the kubectl binary.
set -u
KUBECTL=${KUBECTL:-kubectl}
CRD=tenants.capsule.clastix.io

# One line per watch event: the CRD's deletionTimestamp (empty until it is being deleted). The first
# line is the initial state, so the watch is established once it arrives.
while read -r stamp; do
  if [ -z "${ready:-}" ]; then ready=1; echo "ready"; fi
  if [ -n "$stamp" ]; then break; fi
done < <(exec "$KUBECTL" get crd "$CRD" -w -o 'jsonpath={.metadata.deletionTimestamp}{"\n"}' 2>/dev/null)
kill "$!" 2>/dev/null  # the watch (the process substitution's kubectl)
echo "detected $(date +%s.%N)"

for ns in $("$KUBECTL" get namespaces -l capsule.clastix.io/tenant -o 'jsonpath={.items[*].metadata.name}'); do
  if err=$("$KUBECTL" patch namespace "$ns" --type=json \
       -p '[{"op":"remove","path":"/metadata/ownerReferences"}]' 2>&1 >/dev/null); then
    echo "patched $ns $(date +%s.%N)"
  else
    echo "failed $ns $(date +%s.%N) ${err//$'\n'/ }"
  fi
done
echo "done $(date +%s.%N)"
