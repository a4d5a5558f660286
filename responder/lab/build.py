"""Build the lab's binaries from the Go module proxy, cached by the versions that go into them.

Each component is a wrapper module under responder/lab/gomod/ whose go.mod pins the upstream
versions. The cache key is a hash of that module's go.mod, go.sum and build flags plus the Go
version, so a binary is rebuilt only when one of those changes. Nothing upstream is committed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

from responder.errors import LabError

GOMOD_DIR = Path(__file__).parent / "gomod"

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
HELM_VERSION = "v3.22.0"
CAPSULE_VERSIONS = {"0.14": "v0.14.0", "0.12": "v0.12.4"}
DEFAULT_CAPSULE = "0.14"


@dataclass(frozen=True)
class GoComponent:
    name: str
    module: str  # directory under gomod/
    binaries: dict[str, str]  # output file -> Go package
    ldflags: str = "-s -w"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def module_dir(self) -> Path:
        return GOMOD_DIR / self.module


_K8S_LDFLAGS = ("-s -w -X k8s.io/component-base/version.gitVersion={v} -X k8s.io/component-base/version.gitMajor=1"
                " -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/component-base/version.gitTreeState=clean")

COMPONENTS: dict[str, GoComponent] = {
    "k8s": GoComponent(
        "k8s", "k8s",
        {"etcd": "go.etcd.io/etcd/server/v3",
         "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
         "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager"},
        ldflags=_K8S_LDFLAGS.format(v=K8S_VERSION),
    ),
    "helm": GoComponent("helm", "helm", {"helm": "helm.sh/helm/v3/cmd/helm"}),
    "capsule-0.14": GoComponent(
        "capsule-0.14", "capsule-0.14.0", {"capsule": "github.com/projectcapsule/capsule/cmd/controller"}),
    # Recovery (Velero restore) uses these; not built by default until the recovery tests need them.
    "velero": GoComponent(
        "velero", "velero",
        {"velero": "github.com/vmware-tanzu/velero/cmd/velero",
         "velero-plugin-for-aws": "github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws"}),
    "capsule-0.12": GoComponent(
        "capsule-0.12", "capsule-0.12.4", {"capsule": "github.com/projectcapsule/capsule/cmd"},
        # This release is missing from the checksum database the proxy serves; go.sum pins its hash.
        env={"GONOSUMDB": "github.com/projectcapsule/capsule"}),
    # The guard's notifications go to it (`lab build --alertmanager`); built only when asked for.
    "alertmanager": GoComponent(
        "alertmanager", "alertmanager", {"alertmanager": "github.com/prometheus/alertmanager/cmd/alertmanager"}),
}


def capsule_component(capsule: str) -> GoComponent:
    try:
        return COMPONENTS[f"capsule-{capsule}"]
    except KeyError:
        raise LabError(f"unknown Capsule line {capsule!r} (known: {', '.join(CAPSULE_VERSIONS)})",
                       fix="pass --capsule 0.14 or --capsule 0.12") from None


def cache_root() -> Path:
    base = os.environ.get("RESPONDER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "responder")
    return Path(base)


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise LabError("the Go toolchain is not on PATH; the lab builds etcd, Kubernetes and Capsule from Go modules",
                       fix="install Go 1.26 or newer (https://go.dev/doc/install) and re-run")
    return go


def _go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def component_dir(component: GoComponent, go_version: str | None = None) -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "tools.go"):
        digest.update((component.module_dir / name).read_bytes())
    digest.update(component.ldflags.encode())
    digest.update(repr(sorted(component.binaries.items())).encode())
    digest.update((go_version or _go_version(_go())).encode())
    return cache_root() / "bin" / f"{component.name}-{digest.hexdigest()[:12]}"


def is_built(component: GoComponent) -> bool:
    return (component_dir(component) / ".complete").exists()


def ensure_built(names: list[str], *, out: TextIO = sys.stderr) -> dict[str, Path]:
    """Build what is missing; returns {binary name: path}. Prints progress and total time."""
    go = _go()
    go_version = _go_version(go)
    started = time.monotonic()
    targets = {name: component_dir(COMPONENTS[name], go_version) for name in names}
    built_any = False
    for name, target in targets.items():
        if (target / ".complete").exists():
            continue
        # Held per component: whoever needs only some components (`./dev test`'s first lab tests wait for the
        # build it runs in the background) goes on once those are built, while the rest still builds.
        with _build_lock(out, name):
            if not (target / ".complete").exists():  # another process may have built it meanwhile
                built_any = True
                _build(go, COMPONENTS[name], target, out)
    paths: dict[str, Path] = {}
    for name, target in targets.items():
        for binary in COMPONENTS[name].binaries:
            paths[binary if not name.startswith("capsule") else name] = target / binary
    if built_any:
        print(f"lab build: done in {time.monotonic() - started:.0f}s (cache: {cache_root() / 'bin'})", file=out)
    return paths


@contextmanager
def _build_lock(out: TextIO, component: str) -> Iterator[None]:
    """One builder at a time per cache: a second waits for the first rather than building the same thing."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "build.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"lab build: another build of the lab is running; waiting for it ({component})", file=out, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(go: str, component: GoComponent, target: Path, out: TextIO) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false", **component.env)
    for binary, package in component.binaries.items():
        print(f"lab build: {component.name}: go build {package} (cold builds take minutes) ...", file=out, flush=True)
        t0 = time.monotonic()
        proc = subprocess.run([go, "build", "-trimpath", "-ldflags", component.ldflags, "-o", str(tmp / binary), package],
                              cwd=component.module_dir, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise LabError(f"building {binary} from {package} failed:\n{tail}",
                           fix="check that the Go module proxy is reachable (GOPROXY) and Go is 1.26 or newer")
        print(f"lab build: {component.name}: {binary} built in {time.monotonic() - t0:.0f}s", file=out, flush=True)
    (tmp / ".complete").write_text(f"{time.time()}\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def module_source_dir(component: GoComponent, module_path: str) -> Path:
    """Where the Go module cache holds an upstream module's files (e.g. Capsule's chart)."""
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false", **component.env)
    proc = subprocess.run([_go(), "list", "-m", "-f", "{{.Dir}}", module_path], cwd=component.module_dir,
                          env=env, capture_output=True, text=True)
    directory = proc.stdout.strip()
    if proc.returncode != 0 or not directory:
        proc = subprocess.run([_go(), "mod", "download", "-json", module_path], cwd=component.module_dir,
                              env=env, capture_output=True, text=True)
        proc = subprocess.run([_go(), "list", "-m", "-f", "{{.Dir}}", module_path], cwd=component.module_dir,
                              env=env, capture_output=True, text=True)
        directory = proc.stdout.strip()
    if not directory:
        raise LabError(f"module {module_path} is not in the Go module cache", fix="run `responder lab build` first")
    return Path(directory)
