#!/usr/bin/env python3
"""N snapshots with manifests of about MANIFEST bytes (one long label) and,
with NAME bytes, a carried name of that length (a pax `comment` record on
each manifest member): the archive that measures import memory per
snapshot. Writes plain tar to stdout; pipe it through zstd.

  fat.py N MANIFEST [NAME]

Each snapshot's upper is 4 KiB; each is the previous one's child.
"""

import hashlib
import io
import json
import sys
import tarfile


def main():
    n, manifest_bytes = int(sys.argv[1]), int(sys.argv[2])
    name_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT)
    parent = None
    size = 4096
    for i in range(n):
        manifest = {
            "schema": 1,
            "format": "raw",
            "fstype": "ext4",
            "image": {"ref": "python:3.12", "manifest_digest": "sha256:" + "ab" * 32},
            "parent": parent,
            "created_at": "2026-10-01T09:00:00Z",
            "labels": {"pad": "", "step": str(i)},
            "upper": {"file": "upper.ext4", "size_bytes": size, "integrity": None},
            "source_sandbox": None,
        }
        base = len(json.dumps(manifest, separators=(",", ":")))
        manifest["labels"]["pad"] = "x" * max(0, manifest_bytes - base)
        body = json.dumps(manifest, separators=(",", ":")).encode()
        digest = hashlib.sha256(body).hexdigest()
        parent = "sha256:" + digest
        upper = i.to_bytes(8, "little") + b"\x5a" * (size - 8)
        for name, data in (("manifest.json", body), ("upper.ext4", upper)):
            info = tarfile.TarInfo(f"sha256-{digest[:16]}/{name}")
            info.size = len(data)
            if name == "manifest.json" and name_bytes:
                info.pax_headers = {"comment": "msb-registry.name=" + "n" * name_bytes}
            out.addfile(info, io.BytesIO(data))
    out.close()


if __name__ == "__main__":
    main()
