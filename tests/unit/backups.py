"""A Velero backup tarball made in memory, as Velero lays one out, for the pure recovery tests."""

from __future__ import annotations

import io
import json
import tarfile


def backup_tarball(files: dict[str, dict]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in files.items():
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
