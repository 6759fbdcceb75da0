#!/usr/bin/env bash
# Push/pull benchmark (issue 15), in one run on the same data, against a real
# registry (Debian's docker-registry, filesystem storage in a temp dir, plain
# HTTP on a free 127.0.0.1 port, so the client runs with --insecure):
#   - bytes a child push uploads ÷ its floor: the child's changed 4 KiB blocks
#     (data differing from the parent's block at the same offset) through
#     `zstd -3` (target <= 2);
#   - push of the chain into an empty repository ÷ `export --with-parents` of
#     it to a file (target <= 1.2); push of the child after its parent ÷
#     `export` of the child alone (far below 1);
#   - pull of the chain into a fresh root ÷ `import` of the chain's archive;
#     pull of the child into a root holding the parent ÷ `import` of the
#     child's archive there;
#   - peak RSS (GNU time %M) of each side.
# Every timed push gets a registry of its own (new storage, new port), so
# nothing a previous run stored is found remotely.
#
#   bench/push.sh                    # a 512 MiB upper holding ~120 MiB, child changing ~6%
#   RUNS=5 PARENT_DIRS=40 bench/push.sh
#
# Knobs (environment): UPPER_MIB (512) logical size of each upper,
# PARENT_DIRS (24) directories of 40 files (up to 1 MiB each) the parent
# writes, CHILD_DIRS (1) and REWRITES (10) the child's new directories and
# rewritten parent files, SEED (1), RUNS (3), JOBS (the client's default),
# WORK (a temp dir; removed at the end unless KEEP=1).

set -euo pipefail

UPPER_MIB=${UPPER_MIB:-512}
PARENT_DIRS=${PARENT_DIRS:-24}
CHILD_DIRS=${CHILD_DIRS:-1}
REWRITES=${REWRITES:-10}
SEED=${SEED:-1}
RUNS=${RUNS:-3}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/msb-registry
GEN=$TARGET_DIR/release/examples/ext4_chain
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/msb-push-bench.XXXXXX")}
SRC=$WORK/src-root
JOBS_FLAG=${JOBS:+--jobs $JOBS}
REG_PID=""
REG_ADDR=""

cleanup() {
    stop_registry
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

build() {
    log "== build (release)"
    (cd "$REPO" && cargo build --release --quiet --bin msb-registry --example ext4_chain)
}

# Start a docker-registry with empty storage on a free port; sets REG_PID and REG_ADDR.
start_registry() {
    local port dir=$WORK/registry
    stop_registry
    rm -rf "$dir" && mkdir -p "$dir/data"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
    REG_PID=$!
    REG_ADDR=127.0.0.1:$port
    local i
    for i in $(seq 100); do
        curl -fsS "http://$REG_ADDR/v2/" >/dev/null 2>&1 && return
        sleep 0.1
    done
    cat "$dir/log" >&2
    log "docker-registry did not come up on $REG_ADDR"
    exit 1
}

stop_registry() {
    if [[ -n $REG_PID ]]; then
        kill "$REG_PID" 2>/dev/null || true
        wait "$REG_PID" 2>/dev/null || true
        REG_PID=""
    fi
}

# Run a command once: prints "SECONDS PEAK_RSS_KIB"; its stdout goes to $WORK/out,
# its stderr to $WORK/err (shown when it fails).
timed() {
    local start end
    start=$(date +%s.%N)
    if ! /usr/bin/time -f %M -o "$WORK/rss" bash -c "exec $1" > "$WORK/out" 2> "$WORK/err"; then
        cat "$WORK/err" >&2
        log "failed: $1"
        exit 1
    fi
    end=$(date +%s.%N)
    echo "$(echo "$end - $start" | bc -l) $(tail -1 "$WORK/rss")"
}

# A field of the JSON object in FILE.
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Print medians, the ratio and peak RSS of two series of "SECONDS KIB" lines.
report() {
    local label=$1 ref_label=$2 target=$3 ours=$4 theirs=$5
    local mo mt ro rt
    mo=$(cut -d' ' -f1 <<< "$ours" | median)
    mt=$(cut -d' ' -f1 <<< "$theirs" | median)
    ro=$(cut -d' ' -f2 <<< "$ours" | median)
    rt=$(cut -d' ' -f2 <<< "$theirs" | median)
    printf '%-28s median %7.3f s, peak RSS %6.1f MiB  (runs: %s)\n' "$label" "$mo" \
        "$(echo "$ro / 1024" | bc -l)" "$(cut -d' ' -f1 <<< "$ours" | xargs printf '%.3f ')"
    printf '%-28s median %7.3f s, peak RSS %6.1f MiB  (runs: %s)\n' "$ref_label" "$mt" \
        "$(echo "$rt / 1024" | bc -l)" "$(cut -d' ' -f1 <<< "$theirs" | xargs printf '%.3f ')"
    printf 'ratio %s / %s: %.2f  (target %s)\n\n' "$label" "$ref_label" "$(echo "$mo / $mt" | bc -l)" "$target"
}

setup() {
    log "== data: ext4 parent and child uppers of ${UPPER_MIB} MiB (parent ${PARENT_DIRS} dirs, child +${CHILD_DIRS} dirs, ${REWRITES} rewrites)"
    "$GEN" "$WORK/gen" "$UPPER_MIB" "$PARENT_DIRS" "$CHILD_DIRS" "$REWRITES" "$SEED"
    "$BIN" --root "$SRC" -q add "$WORK/gen/parent" --name parent --cache-dir "$WORK/gen/cache" >/dev/null
    "$BIN" --root "$SRC" -q add "$WORK/gen/child" --name child >/dev/null
    FLOOR=$(zstd -q -3 -c "$WORK/gen/changed-blocks.bin" | wc -c)
    rm -rf "$WORK/gen/parent" "$WORK/gen/child"
    printf 'floor: the child'"'"'s changed 4 KiB blocks, zstd -3: %d bytes (%d raw)\n\n' \
        "$FLOOR" "$(stat -c %s "$WORK/gen/changed-blocks.bin")"
    "$BIN" --root "$SRC" -q export parent -o "$WORK/parent.tar.zst"
    "$BIN" --root "$SRC" -q export child -o "$WORK/child.tar.zst" 2>/dev/null
}

push_cmd() { echo "'$BIN' --root '$SRC' push $1 '$REG_ADDR/$2' --insecure --json $JOBS_FLAG ${3:-}"; }

# Push of the whole chain into an empty registry against export --with-parents.
bench_fresh_push() {
    log "== push --with-parents into an empty registry vs export --with-parents ($RUNS runs each)"
    local ours="" theirs="" r
    for r in $(seq "$RUNS"); do
        start_registry
        ours+="$(timed "$(push_cmd child bench/chain:child --with-parents)")"$'\n'
        cp "$WORK/out" "$WORK/push.json"
        theirs+="$(timed "'$BIN' --root '$SRC' -q export child --with-parents -o '$WORK/chain.tar.zst'")"$'\n'
    done
    printf 'chain: %d bytes uploaded by push (%d blobs), %d bytes in the export archive\n' \
        "$(json_field "$WORK/push.json" bytes_uploaded)" "$(json_field "$WORK/push.json" blobs_uploaded)" "$(stat -c %s "$WORK/chain.tar.zst")"
    report "push chain (fresh)" "export chain" "<= 1.2" "${ours%$'\n'}" "${theirs%$'\n'}"
}

# Push of the child into a repository holding its parent against export of the child alone.
bench_child_push() {
    log "== push of the child after its parent vs export of the child ($RUNS runs each)"
    local ours="" theirs="" bytes="" r
    for r in $(seq "$RUNS"); do
        start_registry
        timed "$(push_cmd parent bench/chain:parent)" >/dev/null
        ours+="$(timed "$(push_cmd child bench/chain:child)")"$'\n'
        cp "$WORK/out" "$WORK/push.json"
        bytes+="$(json_field "$WORK/push.json" bytes_uploaded)"$'\n'
        theirs+="$(timed "'$BIN' --root '$SRC' -q export child -o '$WORK/child.tar.zst'")"$'\n'
    done
    local b
    b=$(median <<< "${bytes%$'\n'}")
    printf 'child push: %d bytes uploaded (%s blobs, %s present), floor %d bytes\n' "$b" \
        "$(json_field "$WORK/push.json" blobs_uploaded)" "$(json_field "$WORK/push.json" blobs_present)" "$FLOOR"
    printf 'ratio child bytes uploaded / floor: %.2f  (target <= 2)\n' "$(echo "$b / $FLOOR" | bc -l)"
    report "push child" "export child" "far below 1" "${ours%$'\n'}" "${theirs%$'\n'}"
}

# Pull of the chain into a fresh root, and of the child into a root holding the parent,
# against import of the matching archives. The registry keeps the last push's chain.
bench_pull() {
    log "== pull vs import ($RUNS runs each)"
    local dst=$WORK/dst ours="" theirs="" r
    local pull="'$BIN' --root '$dst' pull '$REG_ADDR/bench/chain:child' --insecure --json $JOBS_FLAG"
    for r in $(seq "$RUNS"); do
        rm -rf "$dst"
        ours+="$(timed "$pull")"$'\n'
        rm -rf "$dst"
        theirs+="$(timed "'$BIN' --root '$dst' -q import '$WORK/chain.tar.zst'")"$'\n'
    done
    rm -rf "$dst"
    timed "$pull" >/dev/null
    printf 'pull chain: %d bytes downloaded, %d chunks\n' "$(json_field "$WORK/out" bytes_downloaded)" "$(json_field "$WORK/out" chunks_downloaded)"
    "$BIN" --root "$dst" -q verify --content >/dev/null || { log "verify --content failed after pull"; exit 1; }
    report "pull chain (fresh root)" "import chain" "<= 1.2" "${ours%$'\n'}" "${theirs%$'\n'}"

    ours="" theirs=""
    for r in $(seq "$RUNS"); do
        rm -rf "$dst" && "$BIN" --root "$dst" -q import "$WORK/parent.tar.zst"
        ours+="$(timed "$pull")"$'\n'
        rm -rf "$dst" && "$BIN" --root "$dst" -q import "$WORK/parent.tar.zst"
        theirs+="$(timed "'$BIN' --root '$dst' -q import '$WORK/child.tar.zst'")"$'\n'
    done
    rm -rf "$dst" && "$BIN" --root "$dst" -q import "$WORK/parent.tar.zst"
    timed "$pull" >/dev/null
    printf 'pull child onto parent: %d bytes downloaded, %d chunks (%d local)\n' \
        "$(json_field "$WORK/out" bytes_downloaded)" "$(json_field "$WORK/out" chunks_downloaded)" "$(json_field "$WORK/out" chunks_local)"
    "$BIN" --root "$dst" -q verify --content >/dev/null || { log "verify --content failed after pull"; exit 1; }
    report "pull child (parent held)" "import child" "far below 1" "${ours%$'\n'}" "${theirs%$'\n'}"
    rm -rf "$dst"
}

main() {
    build
    setup
    bench_fresh_push
    bench_child_push
    bench_pull
}

main "$@"
