#!/usr/bin/env bash
# Archive benchmark, in one run on the same data: msb-registry export against
# `tar --sparse | zstd -T0 -3`, and msb-registry import of that archive (and of
# a dense one, as microsandbox's save writes) against
# `zstd -dc | tar -xSf - && sha256sum` of the extracted files.
# Prints medians, ratios and peak RSS. Then the hashing bounds: R, one core's
# `openssl speed -evp sha256 -bytes 1048576`, measured in the same run; import
# of the chain, of the large sparse upper, verify --content and add of the
# chain against 1.1 x max(their CPU / cores, largest upper's logical bytes / R);
# and, with BEFORE=path to an older binary, import on one core (taskset -c 0)
# against it.
#
#   bench/archive.sh                 # full size (a few minutes, ~3 GiB of disk)
#   UPPER_MIB=512 DATA_MIB=64 LAYER_MIB=8 bench/archive.sh   # smaller
#
# Knobs (environment): UPPER_MIB (2048) logical size of each chain upper,
# DATA_MIB (256) data in each, LAYERS (3) x LAYER_MIB (32) image layers,
# BIG_MIB (4096) / BIG_DATA_MIB (8) the sparse-upper case, RUNS (5),
# BEFORE (unset: no one-core comparison) an older build to compare against,
# PHASES ("export sparse import hashing") which phases to run after the setup,
# WORK (a temp dir; removed at the end unless KEEP=1), BUILD (1; 0 uses the
# release binary already built).
#
# Each phase is a function; main() runs them in order.

set -euo pipefail

UPPER_MIB=${UPPER_MIB:-2048}
DATA_MIB=${DATA_MIB:-256}
LAYERS=${LAYERS:-3}
LAYER_MIB=${LAYER_MIB:-32}
BIG_MIB=${BIG_MIB:-4096}
BIG_DATA_MIB=${BIG_DATA_MIB:-8}
RUNS=${RUNS:-5}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/msb-registry
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/msb-archive-bench.XXXXXX")}
ROOT=$WORK/root
IMAGE_REF=python:3.12

cleanup() { [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"


build() {
    [[ ${BUILD:-1} == 1 ]] || return 0
    log "== build (release)"
    (cd "$REPO" && cargo build --release --quiet)
}



# Peak resident set of a command, in MiB.
peak_rss_mib() {
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -v bash -c "exec $1" 2>&1 >/dev/null | awk -F': ' '/Maximum resident set size/ { printf "%.1f\n", $2 / 1024 }'
    else
        python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1], shell=True, check=True, stdout=subprocess.DEVNULL)
print("%.1f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))' "exec $1"
    fi
}

setup_registry() {
    log "== registry: 3 uppers of ${UPPER_MIB} MiB logical / ${DATA_MIB} MiB data, ${LAYERS} layers of ${LAYER_MIB} MiB"
    local src=$WORK/src image parent="" digest i=0
    image=$(python3 "$HERE/gen.py" image "$src/cache" "$IMAGE_REF" "$LAYERS" "$LAYER_MIB")
    for name in base deps app; do
        digest=$(python3 "$HERE/gen.py" snapshot "$src/$name" "$UPPER_MIB" "$DATA_MIB" "$i" \
            "$IMAGE_REF" "$image" "2026-10-01T09:0${i}:00Z" $parent)
        "$BIN" --root "$ROOT" -q add "$src/$name" --name "$name" --cache-dir "$src/cache" >/dev/null
        parent=$digest
        i=$((i + 1))
    done
    digest=$(python3 "$HERE/gen.py" snapshot "$src/big" "$BIG_MIB" "$BIG_DATA_MIB" 9 \
        "$IMAGE_REF" "$image" "2026-10-02T09:00:00Z")
    "$BIN" --root "$ROOT" -q add "$src/big" --name big >/dev/null
    rm -rf "$src"
    log "   registry: $(du -sh --apparent-size "$ROOT" | cut -f1) apparent, $(du -sh "$ROOT" | cut -f1) allocated"
}

bench_export() {
    log "== export --with-parents --with-image vs tar --sparse | zstd -T0 -3 ($RUNS runs each)"
    local ours="'$BIN' --root '$ROOT' -q export app --with-parents --with-image -o '$WORK/ours.tar.zst'"
    local theirs="tar --sparse -cf - -C '$ROOT' snapshots/base snapshots/deps snapshots/app cache | zstd -q -T0 -3 > '$WORK/tar.tar.zst'"
    bash -c "$ours" >/dev/null && bash -c "$theirs"   # warm the page cache for both
    local a=() b=() r
    for r in $(seq "$RUNS"); do
        a+=("$(time_of "$ours")")
        b+=("$(time_of "$theirs")")
    done
    local ma mb
    ma=$(printf '%s\n' "${a[@]}" | median)
    mb=$(printf '%s\n' "${b[@]}" | median)
    printf 'export full      median %6.3f s  (runs: %s)\n' "$ma" "${a[*]}"
    printf 'tar|zstd full    median %6.3f s  (runs: %s)\n' "$mb" "${b[*]}"
    printf 'ratio export / tar|zstd: %.2f  (target <= 1.0)\n' "$(echo "$ma / $mb" | bc -l)"
    printf 'archive sizes: export %s bytes, tar|zstd %s bytes\n' \
        "$(stat -c %s "$WORK/ours.tar.zst")" "$(stat -c %s "$WORK/tar.tar.zst")"
    printf 'peak RSS export full: %s MiB (target <= 64)\n' "$(peak_rss_mib "$ours")"
}

bench_sparse() {
    log "== export of a ${BIG_MIB} MiB upper holding ${BIG_DATA_MIB} MiB of data ($RUNS runs)"
    local ours="'$BIN' --root '$ROOT' -q export big -o '$WORK/big.tar.zst'"
    bash -c "$ours" >/dev/null
    local a=() r
    for r in $(seq "$RUNS"); do
        a+=("$(time_of "$ours")")
    done
    printf 'export sparse    median %6.3f s  (target <= 0.3; runs: %s)\n' \
        "$(printf '%s\n' "${a[@]}" | median)" "${a[*]}"
    printf 'peak RSS export sparse: %s MiB\n' "$(peak_rss_mib "$ours")"
}

# Import ARCHIVE (RUNS times into a fresh registry) against the extract-and-hash pipeline.
bench_import_of() {
    local label=$1 archive=$2
    log "== import of the $label archive vs zstd -dc | tar -xSf - && sha256sum ($RUNS runs each)"
    local dst=$WORK/imported out=$WORK/extracted
    local ours="rm -rf '$dst' && '$BIN' --root '$dst' -q import '$archive'"
    local theirs="rm -rf '$out' && mkdir '$out' && zstd -dc '$archive' | tar -xSf - -C '$out' && find '$out' -type f -print0 | xargs -0 sha256sum"
    local extract="rm -rf '$out' && mkdir '$out' && zstd -dc '$archive' | tar -xSf - -C '$out'"
    local a=() b=() c=() r
    for r in $(seq "$RUNS"); do
        a+=("$(time_of "$ours")")
        b+=("$(time_of "$theirs")")
        c+=("$(time_of "$extract")")
    done
    local ma mb mc
    ma=$(printf '%s\n' "${a[@]}" | median)
    mb=$(printf '%s\n' "${b[@]}" | median)
    mc=$(printf '%s\n' "${c[@]}" | median)
    printf 'import %-6s    median %6.3f s  (runs: %s)\n' "$label" "$ma" "${a[*]}"
    printf 'pipeline %-6s  median %6.3f s  (runs: %s)\n' "$label" "$mb" "${b[*]}"
    printf 'ratio import / pipeline (%s): %.2f  (target <= 1.0)\n' "$label" "$(echo "$ma / $mb" | bc -l)"
    printf 'for scale, extraction alone (no hashing) %s: median %.3f s\n' "$label" "$mc"
    printf 'allocated after import %s: %s (extracted by tar: %s)\n' "$label" \
        "$(du -sh "$dst/snapshots" | cut -f1)" "$(du -sh "$out" | cut -f1)"
    rm -rf "$dst"
    printf 'peak RSS import %s: %s MiB (target <= 64)\n' "$label" \
        "$(peak_rss_mib "'$BIN' --root '$dst' -q import '$archive'")"
    rm -rf "$dst" "$out"
}

# The chain's archive, exported here when the export phase did not run.
ensure_ours() {
    [[ -f $WORK/ours.tar.zst ]] ||
        "$BIN" --root "$ROOT" -q export app --with-parents --with-image -o "$WORK/ours.tar.zst"
}

bench_import() {
    ensure_ours
    bench_import_of sparse "$WORK/ours.tar.zst"
    "$BIN" --root "$ROOT" -q export app --with-parents --with-image --dense -o "$WORK/dense.tar.zst"
    bench_import_of dense "$WORK/dense.tar.zst"
}

# Wall and CPU (user + system) seconds of a shell command, as "WALL CPU".
wall_cpu_of() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%e %U %S' -o "$out" bash -c "$1" >/dev/null
    awk '{ printf "%s %.2f\n", $1, $2 + $3 }' "$out"
    rm -f "$out"
}

# Run PREP then time CMD, RUNS times: "MEDIAN_WALL MEDIAN_CPU" then the walls.
timed_runs() {
    local prep=$1 cmd=$2 w=() c=() r wall cpu
    for r in $(seq "$RUNS"); do
        bash -c "$prep"
        read -r wall cpu < <(wall_cpu_of "$cmd")
        w+=("$wall")
        c+=("$cpu")
    done
    echo "$(printf '%s\n' "${w[@]}" | median) $(printf '%s\n' "${c[@]}" | median) ${w[*]}"
}

# One core's SHA-256 rate in bytes per second (openssl prints thousands of bytes).
sha256_rate() {
    openssl speed -evp sha256 -bytes 1048576 2>/dev/null |
        awk '$1 == "sha256" { v = $NF; sub(/k$/, "", v); printf "%.0f\n", v * 1000 }'
}

# Print LABEL's median wall against 1.1 x max(CPU / cores, LOGICAL bytes / R).
against_bound() {
    local label=$1 logical=$2 wall cpu walls
    read -r wall cpu walls <<<"$3"
    awk -v l="$label" -v w="$wall" -v c="$cpu" -v n="$CORES" -v b="$logical" -v r="$R" -v runs="$walls" 'BEGIN {
        cc = c / n; h = b / r; m = (cc > h ? cc : h); bound = 1.1 * m
        printf "%-28s wall %6.3f s, CPU %6.3f s; bound 1.1 x max(CPU/%d %.3f, %.0f B/R %.3f) = %.3f s; wall/bound %.2f (target <= 1.0; runs: %s)\n",
            l, w, c, n, cc, b, h, bound, w / bound, runs
    }'
}

bench_hashing() {
    CORES=$(nproc)
    R=$(sha256_rate)
    log "== hashing bounds: import, verify --content, add ($RUNS runs each)"
    printf 'R = openssl speed -evp sha256 -bytes 1048576: %s B/s on one core; %s cores; load average %s\n' \
        "$R" "$CORES" "$(cut -d' ' -f1-3 /proc/loadavg)"
    local dst=$WORK/imported adst=$WORK/added big=$WORK/big-imported
    local upper=$((UPPER_MIB << 20))
    ensure_ours
    [[ -f $WORK/big.tar.zst ]] || "$BIN" --root "$ROOT" -q export big -o "$WORK/big.tar.zst"
    against_bound "import chain" "$upper" \
        "$(timed_runs "rm -rf '$dst'" "'$BIN' --root '$dst' -q import '$WORK/ours.tar.zst'")"
    # The same with everything inline: what the threads gained on this machine now.
    against_bound "import chain --threads 1" "$upper" \
        "$(timed_runs "rm -rf '$dst'" "'$BIN' --threads 1 --root '$dst' -q import '$WORK/ours.tar.zst'")"
    against_bound "import ${BIG_MIB} MiB upper" "$((BIG_MIB << 20))" \
        "$(timed_runs "rm -rf '$big'" "'$BIN' --root '$big' -q import '$WORK/big.tar.zst'")"
    against_bound "verify --content chain" "$upper" \
        "$(timed_runs ":" "'$BIN' --root '$dst' -q verify --content")"
    against_bound "verify --content --threads 1" "$upper" \
        "$(timed_runs ":" "'$BIN' --threads 1 --root '$dst' -q verify --content")"
    # One command, the directories in any order: the uppers hashed at once.
    local add_all="'$BIN' --root '$adst' -q add '$ROOT/snapshots/app' '$ROOT/snapshots/base' '$ROOT/snapshots/deps'"
    against_bound "add chain (one command)" "$upper" "$(timed_runs "rm -rf '$adst'" "$add_all")"
    # The old way, for comparison: three commands, one upper after another.
    local adds="" n
    for n in base deps app; do
        adds+="'$BIN' --root '$adst' -q add '$ROOT/snapshots/$n' --name $n && "
    done
    against_bound "add chain (3 adds)" "$upper" "$(timed_runs "rm -rf '$adst'" "${adds}true")"
    printf 'peak RSS import chain: %s MiB, verify --content: %s MiB, add chain: %s MiB (target <= 64)\n' \
        "$(rm -rf "$dst" && peak_rss_mib "'$BIN' --root '$dst' -q import '$WORK/ours.tar.zst'")" \
        "$(peak_rss_mib "'$BIN' --root '$dst' -q verify --content")" \
        "$(rm -rf "$adst" && peak_rss_mib "$add_all")"
    if [[ -n ${BEFORE:-} ]]; then
        log "== one core (taskset -c 0): import of the chain, this build vs $BEFORE ($RUNS runs each)"
        local a b
        a=$(timed_runs "rm -rf '$dst'" "taskset -c 0 '$BIN' --root '$dst' -q import '$WORK/ours.tar.zst'")
        b=$(timed_runs "rm -rf '$dst'" "taskset -c 0 '$BEFORE' --root '$dst' -q import '$WORK/ours.tar.zst'")
        awk -v a="$a" -v b="$b" 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            printf "one-core import chain: this build wall %.3f s CPU %.3f s; before wall %.3f s CPU %.3f s; wall ratio %.3f, CPU ratio %.3f (target <= 1.05)\n",
                x[1], x[2], y[1], y[2], x[1] / y[1], x[2] / y[2]
        }'
    fi
    rm -rf "$dst" "$adst" "$big"
}

main() {
    build
    setup_registry
    local phase
    for phase in ${PHASES:-export sparse import hashing}; do
        "bench_$phase"
    done
}

main "$@"
