"""A guard pod's container, as the lab's kubelet runs it: `python -m responder.lab.pod_exec SA_DIR ARGS...`.

In a pod the ServiceAccount's token and CA are mounted at /var/run/secrets/kubernetes.io/serviceaccount, where
the `kubernetes` package's in-cluster loader reads them. The lab's pods share the host's file system, so this
points the loader at the pod's own copy of that volume (SA_DIR), then runs responder with ARGS as the image's
entrypoint would (`runpy`, as `python -m responder`): the in-cluster path is the one taken, with the pod's token.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from kubernetes.config import incluster_config


def main() -> None:
    volume = Path(sys.argv[1])
    incluster_config.SERVICE_TOKEN_FILENAME = str(volume / "token")
    incluster_config.SERVICE_CERT_FILENAME = str(volume / "ca.crt")
    sys.argv = ["responder", *sys.argv[2:]]
    runpy.run_module("responder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
