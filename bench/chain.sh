#!/usr/bin/env bash
# Many small snapshots: import of an N-snapshot chain of 4 KiB uppers (one
# archive, for each N of the list) against `zstd -dc | tar -x && sync` of the same archive, RUNS runs
# each, alternating: the ratio of the medians and the ratio on the quietest pair
# (fastest of ours / fastest of tar's), each against its target (<= 1.5). Then the flushes one import
# makes (strace), and, with FLEET=N, `export --with-parents` of an N-snapshot
# chain under `ulimit -n 1024`.
#
#   bench/chain.sh                  # 5,000 and 10,000 snapshots, 5 runs each
#   N=2000 RUNS=3 bench/chain.sh    # smaller (N="2000 4000": several)
#   FLEET=100000 bench/chain.sh     # also the fleet-scale export (N=0: only that)
#
# The disk of a shared machine swings widely; compare the ratio, not the times.

set -euo pipefail

NS=${N:-5000 10000}
RUNS=${RUNS:-5}
FLEET=${FLEET:-0}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/msb-registry
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/msb-chain-bench.XXXXXX")}

cleanup() { [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"




flushes() {
    strace -f -c -e trace=fsync,fdatasync,syncfs -o "$WORK/strace.txt" bash -c "exec $1" >/dev/null
    awk '$NF == "total" { print $4; found = 1 } END { if (!found) print 0 }' "$WORK/strace.txt"
}

main() {
    log "== build (release)"
    (cd "$REPO" && cargo build --release --quiet)
    local dst=$WORK/imported out=$WORK/extracted
    local N
    for N in $NS; do
        [[ $N -gt 0 ]] && bench_import
    done
    fleet
}

bench_import() {
    log "== archive: a chain of $N snapshots with 4 KiB uppers"
    python3 "$HERE/chain.py" "$N" | zstd -q -3 > "$WORK/chain.tar.zst"
    local ours="rm -rf '$dst' && '$BIN' --root '$dst' -q import '$WORK/chain.tar.zst'"
    local theirs="rm -rf '$out' && mkdir '$out' && zstd -dc '$WORK/chain.tar.zst' | tar -xf - -C '$out' && sync"
    log "== import vs zstd -dc | tar -x && sync ($RUNS runs each, alternating)"
    local a=() b=() r
    for r in $(seq "$RUNS"); do
        a+=("$(time_of "$ours")")
        b+=("$(time_of "$theirs")")
    done
    local ma mb qa qb
    ma=$(printf '%s\n' "${a[@]}" | median)
    mb=$(printf '%s\n' "${b[@]}" | median)
    qa=$(printf '%s\n' "${a[@]}" | sort -g | head -1)
    qb=$(printf '%s\n' "${b[@]}" | sort -g | head -1)
    printf 'import %d-chain        median %7.3f s  min %7.3f s  (runs: %s)\n' "$N" "$ma" "$qa" "${a[*]}"
    printf 'tar -x && sync         median %7.3f s  min %7.3f s  (runs: %s)\n' "$mb" "$qb" "${b[*]}"
    printf 'ratio import / tar -x && sync, %d-chain, medians:       %.2f  (target <= 1.5)\n' \
        "$N" "$(echo "$ma / $mb" | bc -l)"
    printf 'ratio import / tar -x && sync, %d-chain, quietest pair: %.2f  (target <= 1.5)\n' \
        "$N" "$(echo "$qa / $qb" | bc -l)"
    rm -rf "$dst" "$out"
    if command -v strace >/dev/null; then
        printf 'flushes (fsync, fdatasync, syncfs) of one import of %d snapshots: %s\n' \
            "$N" "$(flushes "'$BIN' --root '$dst' -q import '$WORK/chain.tar.zst'")"
        rm -rf "$dst"
    fi
}

fleet() {
    if [[ $FLEET -gt 0 ]]; then
        log "== export --with-parents of a $FLEET-snapshot chain under ulimit -n 1024"
        rm -rf "$dst"
        python3 "$HERE/chain.py" "$FLEET" | zstd -q -3 > "$WORK/fleet.tar.zst"
        printf 'import of the %d-chain, one archive: %.1f s\n' "$FLEET" \
            "$(time_of "'$BIN' --root '$dst' -q import '$WORK/fleet.tar.zst'")"
        local head
        head=$("$BIN" --root "$dst" sql "SELECT name FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent = s.digest)" | tail -1)
        # Over 204,800 members the export is refused up front, naming the --base of its newest part.
        local base="" refusal
        if ! refusal=$("$BIN" --root "$dst" -q export "$head" --with-parents -o "$WORK/fleet-out.tar.zst" 2>&1); then
            printf 'export --with-parents %d-chain: refused: %s\n' "$FLEET" "$refusal"
            base=$(sed -n 's/.*--base \(sha256:[0-9a-f]*\).*/\1/p' <<< "$refusal")
        fi
        local t
        t=$(time_of "ulimit -n 1024 && '$BIN' --root '$dst' -q export '$head' ${base:+--base $base} --with-parents -o '$WORK/fleet-out.tar.zst'")
        printf 'export %s of the %d-chain under ulimit -n 1024: %.1f s, %s bytes, %s members\n' \
            "${base:+--base (newest part)}" "$FLEET" "$t" "$(stat -c %s "$WORK/fleet-out.tar.zst")" \
            "$(zstd -dc "$WORK/fleet-out.tar.zst" | tar -tf - | wc -l)"
    fi
}

main "$@"
