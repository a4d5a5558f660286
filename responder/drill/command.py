"""`responder drill`'s command line: its flags, and which drill runs (the embedded lab, an existing
cluster, or the cascade at several sizes with --bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from responder.lab.build import CAPSULE_VERSIONS, DEFAULT_CAPSULE


def add_parser(sub: argparse._SubParsersAction) -> None:
    drill = sub.add_parser("drill", help="a game day on the embedded local lab, with a scorecard")
    drill.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default=DEFAULT_CAPSULE)
    drill.add_argument("--tenants", type=int, default=20)
    drill.add_argument("--namespaces-per-tenant", type=int, default=10)
    drill.add_argument("--observe", type=float, default=30.0,
                       help="seconds after the trigger to keep checking that saved namespaces stay alive")
    drill.add_argument("--headless", action="store_true", help="no TUI: progress on stderr (the default without a terminal, or with -o)")
    drill.add_argument("--state-dir", type=Path, default=None, help="lab state dir (default: a drill lab of its own)")
    drill.add_argument("--keep", action="store_true",
                       help="leave the lab running afterwards (existing cluster: leave what the drill seeded)")
    drill.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    add_drill_options(drill)
    drill.set_defaults(handler=cmd_drill)


def add_drill_options(drill: argparse.ArgumentParser) -> None:
    """Scenario, existing-cluster and bench flags (responder/drill/scenarios.py, existing.py, cascade_bench.py)."""
    from responder.drill.cascade_bench import add_bench_arguments
    from responder.drill.scenarios import CRD_DELETION, SCENARIOS

    drill.add_argument("--scenario", choices=SCENARIOS, default=CRD_DELETION,
                       help="crd-deletion (default), tenant-mass-deletion (every Tenant deleted at once), "
                            "breaker-unavailable (Capsule's namespace webhooks set to failurePolicy Ignore first)")
    drill.add_argument("--no-backup", action="store_true",
                       help="drill without a backup to restore from (recorded in the scorecard's options)")
    target = drill.add_argument_group("existing cluster (instead of the embedded lab)")
    target.add_argument("--kubeconfig", help="drill on this kubeconfig's cluster (a sandbox!)")
    target.add_argument("--context", help="the kubeconfig context to use")
    target.add_argument("--target", help="must repeat the context in use, or the drill refuses (exit 2)")
    target.add_argument("--journal", default=None, metavar="DIR", help="incident journals (existing cluster)")
    add_bench_arguments(drill)


def cmd_drill(args: argparse.Namespace) -> int:
    if getattr(args, "bench", False):
        from responder.drill.cascade_bench import cmd_drill_bench

        return cmd_drill_bench(args)
    if args.kubeconfig or args.context or args.target:
        from responder.drill.existing import cmd_drill_existing

        return cmd_drill_existing(args)
    from responder.drill.lab_drill import cmd_drill_lab

    return cmd_drill_lab(args)
