#!/usr/bin/env bash
# Many small snapshots: import of an N-snapshot chain of 4 KiB uppers (one
# archive, for each N of the list) against `zstd -dc | tar -x && sync` of the same archive, RUNS runs
# each, alternating: the ratio of the medians and the ratio on the quietest pair
# (fastest of ours / fastest of tar's), each against its target (<= 1.5), and
# the same for CPU time (user + sys, children included). Then the flushes one
# import makes (strace), and, with FLEET=N, `export --with-parents` of an
# N-snapshot chain under `ulimit -n 1024`.
#
#   bench/chain.sh                  # 5,000 and 10,000 snapshots, 5 runs each
#   N=2000 RUNS=3 bench/chain.sh    # smaller (N="2000 4000": several)
#   FLEET=100000 bench/chain.sh     # also the fleet-scale export (N=0: only that)
#   BUILD=0 bench/chain.sh          # the release binary as it is, no build
#
# Every timed run writes into a directory of its own that nothing used
# before, and nothing is deleted while runs are timed: ext4 without a journal
# skips inodes freed in the last dirty_expire_centisecs (+ 5 s) when it
# allocates, one by one, so a run that follows the deletion of the previous
# run's 15,000 inodes pays for them, and which side pays depended on the
# order. The trees of one N are deleted after its last run, then the next N
# waits out that window (SETTLE seconds; default the kernel's window).
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
    if [[ ${BUILD:-1} == 1 ]]; then
        log "== build (release)"
        (cd "$REPO" && cargo build --release --quiet)
    fi
    local dst=$WORK/imported
    local N deleted=0
    for N in $NS; do
        if [[ $N -gt 0 ]]; then
            [[ $deleted == 1 ]] && settle
            bench_import
            deleted=1
        fi
    done
    [[ $FLEET -gt 0 && $deleted == 1 ]] && settle
    fleet
}

# Wait until inodes freed before now no longer slow ext4's allocation.
settle() {
    local window
    window=${SETTLE:-$(( $(cat /proc/sys/vm/dirty_expire_centisecs) / 100 + 5 ))}
    log "== sync, then ${window} s for the deleted trees' inodes to age out"
    sync
    sleep "$window"
}

bench_import() {
    log "== archive: a chain of $N snapshots with 4 KiB uppers"
    python3 "$HERE/chain.py" "$N" | zstd -q -3 > "$WORK/chain.tar.zst"
    log "== import vs zstd -dc | tar -x && sync ($RUNS runs each, alternating, each into a new directory)"
    local a=() b=() ca=() cb=() r t
    for r in $(seq "$RUNS"); do
        t=$(cpu_time_of "'$BIN' --root '$WORK/ours.$N.$r' -q import '$WORK/chain.tar.zst'")
        a+=("${t% *}") ca+=("${t#* }")
        t=$(cpu_time_of "mkdir '$WORK/tar.$N.$r' && zstd -dc '$WORK/chain.tar.zst' | tar -xf - -C '$WORK/tar.$N.$r' && sync")
        b+=("${t% *}") cb+=("${t#* }")
    done
    report "import $N-chain" "${a[@]}"
    report "tar -x && sync" "${b[@]}"
    report "import CPU" "${ca[@]}"
    report "tar -x CPU" "${cb[@]}"
    ratios "" "${a[*]}" "${b[*]}"
    ratios "CPU (user + sys) " "${ca[*]}" "${cb[*]}"
    if command -v strace >/dev/null; then
        printf 'flushes (fsync, fdatasync, syncfs) of one import of %d snapshots: %s\n' \
            "$N" "$(flushes "'$BIN' --root '$WORK/ours.$N.strace' -q import '$WORK/chain.tar.zst'")"
    fi
    rm -rf "$WORK"/ours.* "$WORK"/tar.*
}

# One side's median and fastest of the figures given, with every run.
report() {
    local what=$1
    shift
    printf '%-22s median %7.3f s  min %7.3f s  (runs: %s)\n' "$what" \
        "$(printf '%s\n' "$@" | median)" "$(printf '%s\n' "$@" | sort -g | head -1)" "$*"
}

# The ratios of two sides' medians and fastest runs against the target.
ratios() {
    local what=$1 ma mb qa qb
    # shellcheck disable=SC2086
    {
        ma=$(printf '%s\n' $2 | median)
        mb=$(printf '%s\n' $3 | median)
        qa=$(printf '%s\n' $2 | sort -g | head -1)
        qb=$(printf '%s\n' $3 | sort -g | head -1)
    }
    printf 'ratio import / tar -x && sync, %s%d-chain, medians:       %.2f  (target <= 1.5)\n' \
        "$what" "$N" "$(echo "$ma / $mb" | bc -l)"
    printf 'ratio import / tar -x && sync, %s%d-chain, quietest pair: %.2f  (target <= 1.5)\n' \
        "$what" "$N" "$(echo "$qa / $qb" | bc -l)"
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
