#!/usr/bin/env bash
# Import benchmark (issue 4): `msb-registry import` of a zstd archive versus
# `zstd -dc ARCHIVE | tar -xSf - && sha256sum` of the extracted files, in the
# same run, plus import's peak RSS. Ratios, not absolute timings, are the point.
#
#   bash bench/import_bench.sh [WORKDIR]     (needs python3, GNU tar, zstd, /usr/bin/time)
#
# The archive: a 2-snapshot chain, 1 GiB logical uppers holding 128 MiB of data
# each (half random, half compressible), written dense by GNU tar as
# microsandbox's save does, zstd -3.
set -euo pipefail
work=${1:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --manifest-path "$here/Cargo.toml" -q
bin=${CARGO_TARGET_DIR:-$here/target}/release/msb-registry
mkdir -p "$work/src"
members=$(python3 - "$work/src" <<'PY'
import os, sys, json, hashlib
os.chdir(sys.argv[1])
parent=None
names=[]
for i in range(2):
    tmp=f'tmp{i}'; os.makedirs(tmp, exist_ok=True)
    size=1<<30
    with open(f'{tmp}/upper.ext4','wb') as f:
        f.truncate(size)
        for k in range(64):  # 64 x 2 MiB extents spread out
            f.seek(k*(size//64))
            block=os.urandom(1<<20)+bytes([k+i])*(1<<20)
            f.write(block)
    h=hashlib.sha256()
    with open(f'{tmp}/upper.ext4','rb') as f:
        while True:
            b=f.read(1<<22)
            if not b: break
            h.update(b)
    m={"schema":1,"format":"raw","fstype":"ext4","image":{"ref":"python:3.12","manifest_digest":"sha256:"+"a"*64},
       "parent":parent,"created_at":f"2026-10-01T09:0{i}:00Z","labels":{},
       "upper":{"file":"upper.ext4","size_bytes":size,"integrity":{"algorithm":"sha256","digest":"sha256:"+h.hexdigest()}},
       "source_sandbox":None}
    b=json.dumps(m,separators=(',',':')).encode()
    d=hashlib.sha256(b).hexdigest()
    with open(f'{tmp}/manifest.json','wb') as f: f.write(b)
    os.rename(tmp, 'sha256-'+d[:16])
    parent='sha256:'+d
    names.append('sha256-'+d[:16])
print(' '.join(n+'/manifest.json '+n+'/upper.ext4' for n in names))
PY
)
(cd "$work/src" && tar --format=gnu -cf - $members) | zstd -3 -T0 -q -f -o "$work/bench.tar.zst"
ls -l "$work/bench.tar.zst"
rm -rf "$work/reg" "$work/out" && mkdir "$work/out" && sync
/usr/bin/time -f "import:   %e s wall, peak RSS %M KiB" "$bin" --root "$work/reg" import "$work/bench.tar.zst" -q >/dev/null
/usr/bin/time -f "pipeline: %e s wall (zstd -dc | tar -xSf - ; sha256sum)" \
  bash -c "zstd -dc '$work/bench.tar.zst' | tar -xSf - -C '$work/out' && sha256sum '$work'/out/*/* >/dev/null"
du -sh "$work/reg/snapshots" "$work/out"
