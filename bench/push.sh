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
#     child's archive there (target <= 0.7, issue 24);
#   - for scale: the child's chunks its parent lacks, compressed one by one
#     (what a push needs at best with this chunk size), over the floor;
#   - wall, CPU (user + system) and peak RSS (GNU time) of each side, and the
#     CPU docker-registry spent meanwhile (it is most of a push's time).
# Every timed push gets a registry of its own (new storage, new port), so
# nothing a previous run stored is found remotely.
#
#   bench/push.sh                    # a 512 MiB upper holding ~120 MiB, child changing ~5% of its blocks
#   RUNS=5 PARENT_DIRS=40 bench/push.sh
#
# For the registry's share: the same blobs stored and fetched by
# bench/oci_blobs.py with bare requests (POST + PUT, GET), JOBS (8) in flight;
# push of the chain ÷ the bare POST+PUT of its blobs has a target of <= 1.15,
# and every push and pull a peak RSS of <= 64 MiB at default settings (issue 24).
#
# Knobs (environment): UPPER_MIB (512) logical size of each upper,
# PARENT_DIRS (24) directories of 40 files (up to 1 MiB each) the parent
# writes, CHILD_DIRS (1) and REWRITES (10) the child's new directories and
# rewritten parent files, SEED (1), RUNS (3), JOBS (--jobs; default the client's 8),
# WORK (a temp dir; removed at the end unless KEEP=1), BUILD (1; 0 uses the
# release binary and examples already built), PHASES ("push child pull": which
# parts to run; without push, the chain is pushed once untimed for the pulls).
#
# The pull part also prints the child's floor: the integrity hash of its
# pulled upper alone (examples/integrity_floor: SHA-256 over every logical
# byte, holes fed as zeros, as the pull's integrity thread computes it,
# checked against the manifest's digest), and the child's pull over it.

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
FLOOR_BIN=$TARGET_DIR/release/examples/integrity_floor
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/msb-push-bench.XXXXXX")}
SRC=$WORK/src-root
JOBS_FLAG=${JOBS:+--jobs $JOBS}
REF_JOBS=${JOBS:-8}
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
    [[ ${BUILD:-1} == 1 ]] || return 0
    log "== build (release)"
    (cd "$REPO" && cargo build --release --quiet --bin msb-registry --example ext4_chain --example integrity_floor)
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

# CPU seconds (user + system) docker-registry has used so far.
registry_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$REG_PID/stat"; }

# Run a command once: prints "WALL_SECONDS PEAK_RSS_KIB CPU_SECONDS REGISTRY_CPU_SECONDS"
# (CPU: the command's user + system; the registry's: what docker-registry spent meanwhile).
# Its stdout goes to $WORK/out, its stderr to $WORK/err (shown when it fails).
timed() {
    local start end reg0=0 reg1=0
    [[ -n $REG_PID ]] && reg0=$(registry_cpu)
    start=$(date +%s.%N)
    if ! /usr/bin/time -f '%M %U %S' -o "$WORK/rss" bash -c "exec $1" > "$WORK/out" 2> "$WORK/err"; then
        cat "$WORK/err" >&2
        log "failed: $1"
        exit 1
    fi
    end=$(date +%s.%N)
    [[ -n $REG_PID ]] && reg1=$(registry_cpu)
    tail -1 "$WORK/rss" | awk -v wall="$(echo "$end - $start" | bc -l)" -v reg="$(echo "$reg1 - $reg0" | bc -l)" \
        '{ printf "%.3f %d %.2f %.2f\n", wall, $1, $2 + $3, reg }'
}

# A field of the JSON object in FILE.
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Column N of the lines in $1, median.
col_median() { cut -d' ' -f"$2" <<< "$1" | median; }

# One line of medians of a series of timed lines: wall, CPU, peak RSS and, when
# a registry was up, its CPU.
line() {
    local label=$1 lines=$2
    printf '%-28s median %7.3f s wall, %6.2f s CPU, peak RSS %5.1f MiB' "$label" "$(col_median "$lines" 1)" \
        "$(col_median "$lines" 3)" "$(echo "$(col_median "$lines" 2) / 1024" | bc -l)"
    (( $(echo "$(col_median "$lines" 4) > 0" | bc) )) && printf ', registry CPU %6.2f s' "$(col_median "$lines" 4)"
    printf '  (walls: %s)\n' "$(cut -d' ' -f1 <<< "$lines" | tr '\n' ' ')"
}

# The wall and CPU ratios of two series, and the target when there is one.
ratio() {
    local label=$1 ours=$2 theirs=$3 target=${4:-}
    printf 'ratio %s: %.2f wall%s, %.2f CPU\n' "$label" \
        "$(echo "$(col_median "$ours" 1) / $(col_median "$theirs" 1)" | bc -l)" "${target:+ (target $target)}" \
        "$(echo "$(col_median "$ours" 3) / $(col_median "$theirs" 3)" | bc -l)"
}

# The peak RSS of a series (its largest run) against the 64 MiB target.
rss() {
    printf 'peak RSS %s: %.1f MiB (target <= 64 MiB at default settings)\n' "$1" \
        "$(echo "$(cut -d' ' -f2 <<< "$2" | sort -n | tail -1) / 1024" | bc -l)"
}

# Lines and ratio of our side against the reference.
report() {
    local label=$1 ref_label=$2 target=$3 ours=$4 theirs=$5
    line "$label" "$ours"
    line "$ref_label" "$theirs"
    ratio "$label / $ref_label" "$ours" "$theirs" "$target"
}

# Copy the blobs the registry holds for repository $1 (its layers and configs) to $WORK/blobs.
keep_blobs() {
    local v2=$WORK/registry/data/docker/registry/v2 link hex
    rm -rf "$WORK/blobs" && mkdir "$WORK/blobs"
    for link in "$v2/repositories/$1/_layers/sha256"/*; do
        hex=${link##*/}
        cp "$v2/blobs/sha256/${hex:0:2}/$hex/data" "$WORK/blobs/$hex"
    done
}

setup() {
    log "== data: ext4 parent and child uppers of ${UPPER_MIB} MiB (parent ${PARENT_DIRS} dirs, child +${CHILD_DIRS} dirs, ${REWRITES} rewrites)"
    "$GEN" "$WORK/gen" "$UPPER_MIB" "$PARENT_DIRS" "$CHILD_DIRS" "$REWRITES" "$SEED"
    "$BIN" --root "$SRC" -q add "$WORK/gen/parent" --name parent --cache-dir "$WORK/gen/cache" >/dev/null
    "$BIN" --root "$SRC" -q add "$WORK/gen/child" --name child >/dev/null
    FLOOR=$(zstd -q -3 -c "$WORK/gen/changed-blocks.bin" | wc -c)
    CHUNKS_NEEDED=$(cat "$WORK/gen/chunks-needed")
    rm -rf "$WORK/gen/parent" "$WORK/gen/child"
    printf 'floor: the child'"'"'s changed 4 KiB blocks, zstd -3: %d bytes (%d raw)\n\n' \
        "$FLOOR" "$(stat -c %s "$WORK/gen/changed-blocks.bin")"
    "$BIN" --root "$SRC" -q export parent -o "$WORK/parent.tar.zst"
    "$BIN" --root "$SRC" -q export child -o "$WORK/child.tar.zst" 2>/dev/null
}

push_cmd() { echo "'$BIN' --root '$SRC' push $1 '$REG_ADDR/$2' --insecure --json $JOBS_FLAG ${3:-}"; }

# Push of the whole chain into an empty registry against export --with-parents, and
# against the registry's own cost of storing the same blobs (oci_blobs.py put).
bench_fresh_push() {
    log "== push --with-parents into an empty registry vs export --with-parents ($RUNS runs each)"
    local ours="" theirs="" direct="" r
    for r in $(seq "$RUNS"); do
        start_registry
        ours+="$(timed "$(push_cmd child bench/chain:child --with-parents)")"$'\n'
        cp "$WORK/out" "$WORK/push.json"
        [[ $r == 1 ]] && keep_blobs bench/chain
        theirs+="$(timed "'$BIN' --root '$SRC' -q export child --with-parents -o '$WORK/chain.tar.zst'")"$'\n'
        start_registry
        direct+="$(timed "python3 '$HERE/oci_blobs.py' put '$REG_ADDR' bench/direct '$WORK/blobs' $REF_JOBS")"$'\n'
    done
    printf 'chain: push uploaded %d bytes in %d blobs; export archive %d bytes\n' \
        "$(json_field "$WORK/push.json" bytes_uploaded)" "$(json_field "$WORK/push.json" blobs_uploaded)" \
        "$(stat -c %s "$WORK/chain.tar.zst")"
    report "push chain (fresh)" "export chain" "<= 1.2" "${ours%$'\n'}" "${theirs%$'\n'}"
    line "same blobs, bare POST+PUT" "${direct%$'\n'}"
    ratio "push chain / bare POST+PUT (the registry alone)" "${ours%$'\n'}" "${direct%$'\n'}" "<= 1.15"
    rss "push chain" "${ours%$'\n'}"
    echo
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
    printf 'for scale: the child'"'"'s chunks its parent lacks, zstd -3 each: %d bytes, %.2f x the floor; uploaded / that: %.3f\n' \
        "$CHUNKS_NEEDED" "$(echo "$CHUNKS_NEEDED / $FLOOR" | bc -l)" "$(echo "$b / $CHUNKS_NEEDED" | bc -l)"
    report "push child" "export child" "far below 1" "${ours%$'\n'}" "${theirs%$'\n'}"
    rss "push child" "${ours%$'\n'}"
    echo
}

# Pull of the chain into a fresh root, and of the child into a root holding the parent,
# against import of the matching archives. The registry keeps the last push's chain.
# The first pull of each kind is checked with verify --content.
bench_pull() {
    log "== pull vs import ($RUNS runs each)"
    local dp=$WORK/pulled di=$WORK/imported ours="" theirs="" direct="" r
    local pull="'$BIN' --root '$dp' pull '$REG_ADDR/bench/chain:child' --insecure --json $JOBS_FLAG"
    for r in $(seq "$RUNS"); do
        rm -rf "$dp" "$di"
        ours+="$(timed "$pull")"$'\n'
        [[ $r == 1 ]] && cp "$WORK/out" "$WORK/pull.json" && verified "$dp"
        theirs+="$(timed "'$BIN' --root '$di' -q import '$WORK/chain.tar.zst'")"$'\n'
        direct+="$(timed "python3 '$HERE/oci_blobs.py' get '$REG_ADDR' bench/chain '$WORK/blobs' $REF_JOBS")"$'\n'
    done
    printf 'pull chain: %d bytes downloaded, %d chunks\n' \
        "$(json_field "$WORK/pull.json" bytes_downloaded)" "$(json_field "$WORK/pull.json" chunks_downloaded)"
    report "pull chain (fresh root)" "import chain" "<= 1" "${ours%$'\n'}" "${theirs%$'\n'}"
    rss "pull chain (fresh root)" "${ours%$'\n'}"
    line "same blobs, bare GET" "${direct%$'\n'}"
    ratio "pull chain / bare GET (for scale: transfer alone, nothing written)" "${ours%$'\n'}" "${direct%$'\n'}"
    echo

    ours="" theirs="" floor=""
    for r in $(seq "$RUNS"); do
        rm -rf "$dp" "$di"
        "$BIN" --root "$dp" -q import "$WORK/parent.tar.zst"
        "$BIN" --root "$di" -q import "$WORK/parent.tar.zst"
        ours+="$(timed "$pull")"$'\n'
        cp "$WORK/out" "$WORK/pull.json"
        [[ $r == 1 ]] && verified "$dp"
        floor+="$("$FLOOR_BIN" "$dp/snapshots/$(json_field "$WORK/pull.json" name)" | cut -d' ' -f1)"$'\n'
        theirs+="$(timed "'$BIN' --root '$di' -q import '$WORK/child.tar.zst'")"$'\n'
    done
    printf 'pull child onto parent: %d bytes downloaded, %d chunks (%d local)\n' \
        "$(json_field "$WORK/pull.json" bytes_downloaded)" "$(json_field "$WORK/pull.json" chunks_downloaded)" \
        "$(json_field "$WORK/pull.json" chunks_local)"
    report "pull child (parent held)" "import child" "<= 0.7" "${ours%$'\n'}" "${theirs%$'\n'}"
    rss "pull child (parent held)" "${ours%$'\n'}"
    local f
    f=$(median <<< "${floor%$'\n'}")
    printf 'floor: the integrity hash of the child'"'"'s upper alone, median %.3f s (runs: %s); ÷ import child %.2f\n' \
        "$f" "$(tr '\n' ' ' <<< "${floor%$'\n'}")" "$(echo "$f / $(col_median "${theirs%$'\n'}" 1)" | bc -l)"
    printf 'ratio pull child / floor: %.2f wall (the rest is transfer, install and process start)\n' \
        "$(echo "$(col_median "${ours%$'\n'}" 1) / $f" | bc -l)"
    echo
    rm -rf "$dp" "$di"
}

# Fail unless the registry at $1 passes verify --content.
verified() {
    "$BIN" --root "$1" -q verify --content >/dev/null || { log "verify --content failed in $1"; exit 1; }
}

# The chain pushed once, untimed, for a run without the push part: the
# registry, blobs and archive the pull part uses.
push_once() {
    log "== push of the chain (untimed, for the pulls)"
    start_registry
    timed "$(push_cmd child bench/chain:child --with-parents)" >/dev/null
    keep_blobs bench/chain
    "$BIN" --root "$SRC" -q export child --with-parents -o "$WORK/chain.tar.zst"
}

main() {
    local phases=" ${PHASES:-push child pull} "
    build
    setup
    [[ $phases == *" push "* ]] && bench_fresh_push
    [[ $phases == *" child "* ]] && bench_child_push
    if [[ $phases == *" pull "* ]]; then
        [[ $phases == *" push "* ]] || push_once
        bench_pull
    fi
}

main "$@"
