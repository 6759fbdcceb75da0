#!/usr/bin/env python3
"""A chain of N snapshots with small uppers as one archive, parents first,
as `export --with-parents` writes it: the many-small-files case of
bench/chain.sh. Writes plain tar to stdout; pipe it through zstd.

  chain.py N [FROM]

With FROM, only snapshots FROM..N-1 of that same chain are written (the
first names its parent, snapshot FROM-1, which the registry must hold):
import caps an archive at 204,800 members, so a longer chain goes in parts.
"""

import hashlib
import io
import json
import sys
import tarfile


def main():
    n = int(sys.argv[1])
    start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    size = 4096
    out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT)
    parent = None
    for i in range(n):
        manifest = {
            "schema": 1,
            "format": "raw",
            "fstype": "ext4",
            "image": {"ref": "python:3.12", "manifest_digest": "sha256:" + "ab" * 32},
            "parent": parent,
            "created_at": "2026-10-01T09:00:00Z",
            "labels": {"step": str(i)},
            "upper": {"file": "upper.ext4", "size_bytes": size, "integrity": None},
            "source_sandbox": None,
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        digest = hashlib.sha256(body).hexdigest()
        upper = i.to_bytes(8, "little") + b"\x5a" * (size - 8)
        parent = "sha256:" + digest
        if i < start:
            continue
        for name, data in (("manifest.json", body), ("upper.ext4", upper)):
            info = tarfile.TarInfo(f"sha256-{digest[:16]}/{name}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    out.close()


if __name__ == "__main__":
    main()
