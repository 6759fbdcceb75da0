#!/usr/bin/env python3
"""Benchmark data for bench/archive.sh: microsandbox-style snapshot
directories (sparse uppers holding a mix of random and compressible data)
and an image cache. Prints the digest of what it wrote.

  gen.py image CACHE_DIR REF LAYERS LAYER_MIB
  gen.py snapshot DIR LEN_MIB DATA_MIB SEED IMAGE_REF IMAGE_DIGEST CREATED_AT [PARENT]
"""

import hashlib
import json
import os
import random
import sys

MIB = 1 << 20
CHUNK = 4 * MIB
# Low-entropy text: 16 letters, spaces and newlines, about 2:1 under zstd -3.
TEXT = bytes.maketrans(bytes(range(256)), (b"etaoinshrdlucmfw" * 15 + b" " * 12 + b"\n" * 4))


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunk(rng, i, n):
    """Alternate incompressible random chunks and compressible text chunks."""
    data = rng.randbytes(n)
    return data if i % 2 == 0 else data.translate(TEXT)


def normalize_ref(ref):
    name, _, tag = ref.partition(":")
    if "/" not in name:
        name = "library/" + name
    first = name.split("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    return name + (":" + tag if tag else "")


def image(cache_dir, ref, layers, layer_mib):
    rng = random.Random(1234)
    for kind in ("manifests", "layers", "fsmeta", "vmdk"):
        os.makedirs(os.path.join(cache_dir, kind), exist_ok=True)
    infos = []
    for i in range(layers):
        data = b"".join(chunk(rng, j + i, MIB) for j in range(layer_mib))
        diff_id = sha256(data)
        with open(os.path.join(cache_dir, "layers", "sha256_%s.erofs" % diff_id[7:]), "wb") as f:
            f.write(data)
        infos.append({
            "digest": sha256(b"blob" + data[:4096]),
            "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
            "size_bytes": len(data) // 2,
            "diff_id": diff_id,
        })
    raw_config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in infos]}})
    raw_manifest = json.dumps({"schemaVersion": 2, "config": {"digest": sha256(raw_config.encode())},
                               "layers": [l["digest"] for l in infos]})
    manifest_digest = sha256(raw_manifest.encode())
    meta = {
        "manifest_digest": manifest_digest,
        "config_digest": sha256(raw_config.encode()),
        "raw_manifest_json": raw_manifest,
        "raw_config_json": raw_config,
        "config": {},
        "layers": infos,
    }
    key = hashlib.sha256(normalize_ref(ref).encode()).hexdigest()
    with open(os.path.join(cache_dir, "manifests", key + ".json"), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(cache_dir, "fsmeta", "sha256_%s.erofs" % manifest_digest[7:]), "wb") as f:
        f.write(chunk(rng, 1, MIB))
    with open(os.path.join(cache_dir, "vmdk", "sha256_%s.vmdk" % manifest_digest[7:]), "w") as f:
        f.write("# Disk DescriptorFile\nversion=1\n")
    print(manifest_digest)


def snapshot(directory, len_mib, data_mib, seed, image_ref, image_digest, created_at, parent=None):
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    length = len_mib * MIB
    chunks = max(1, data_mib * MIB // CHUNK)
    size = min(CHUNK, data_mib * MIB)
    stride = length // chunks // MIB * MIB
    hasher = hashlib.sha256(b"msb-sparse-sha256-v1\0" + length.to_bytes(8, "little"))
    zeros = bytes(16 * MIB)
    pos = 0
    with open(os.path.join(directory, "upper.ext4"), "wb") as f:
        f.truncate(length)
        for i in range(chunks):
            offset = i * stride + (rng.randrange(0, max(1, (stride - size) // 4096)) * 4096 if stride > size else 0)
            data = chunk(rng, i, size)
            f.seek(offset)
            f.write(data)
            gap = offset - pos
            while gap > 0:
                n = min(gap, len(zeros))
                hasher.update(zeros[:n])
                gap -= n
            hasher.update(data)
            pos = offset + size
        gap = length - pos
        while gap > 0:
            n = min(gap, len(zeros))
            hasher.update(zeros[:n])
            gap -= n
    manifest = {
        "schema": 1,
        "format": "raw",
        "fstype": "ext4",
        "image": {"ref": image_ref, "manifest_digest": image_digest},
        "parent": parent,
        "created_at": created_at,
        "labels": {"bench": "archive", "seed": str(seed)},
        "upper": {
            "file": "upper.ext4",
            "size_bytes": length,
            "integrity": {"algorithm": "msb-sparse-sha256-v1", "digest": "sha256:" + hasher.hexdigest()},
        },
        "source_sandbox": "bench",
    }
    canonical = json.dumps(manifest, separators=(",", ":")).encode()
    with open(os.path.join(directory, "manifest.json"), "wb") as f:
        f.write(canonical)
    print(sha256(canonical))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "image":
        image(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "snapshot":
        snapshot(args[0], int(args[1]), int(args[2]), int(args[3]), *args[4:])
    else:
        sys.exit(__doc__)
