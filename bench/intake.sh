#!/usr/bin/env bash
# Intake cost of the chunk index (issue 14): `add` and `import` timed with two
# binaries — one built before the chunk index, one after — on the same data in
# the same run, alternating run by run. Prints medians and the after/before ratio.
#
#   BEFORE=/path/to/old/msb-registry bench/intake.sh
#
# Knobs (environment): BEFORE (required), AFTER (target/release/msb-registry),
# UPPER_MIB (2048) logical size and DATA_MIB (256) data of each of the chain's
# 3 uppers, RUNS (5), WORK (a temp dir; removed at the end unless KEEP=1).

set -euo pipefail

UPPER_MIB=${UPPER_MIB:-2048}
DATA_MIB=${DATA_MIB:-256}
RUNS=${RUNS:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
AFTER=${AFTER:-${CARGO_TARGET_DIR:-$REPO/target}/release/msb-registry}
BEFORE=${BEFORE:?set BEFORE to a msb-registry binary built without the chunk index}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/msb-intake-bench.XXXXXX")}
IMAGE_REF=python:3.12

cleanup() { [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

# Wall and CPU (user + system) seconds of a shell command, as "WALL CPU". CPU time
# is the steadier figure on a shared machine.
wall_and_cpu_of() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%e %U %S' -o "$out" bash -c "$1" >/dev/null
    awk '{ printf "%s %.2f\n", $1, $2 + $3 }' "$out"
    rm -f "$out"
}


setup() {
    log "== data: 3 uppers of ${UPPER_MIB} MiB logical / ${DATA_MIB} MiB data"
    local src=$WORK/src image parent="" digest i=0
    image=$(python3 "$HERE/gen.py" image "$src/cache" "$IMAGE_REF" 1 1)
    for name in base deps app; do
        digest=$(python3 "$HERE/gen.py" snapshot "$src/$name" "$UPPER_MIB" "$DATA_MIB" "$i" \
            "$IMAGE_REF" "$image" "2026-10-01T09:0${i}:00Z" $parent)
        parent=$digest
        i=$((i + 1))
    done
    "$AFTER" --root "$WORK/seed" -q add "$src/base" --name base >/dev/null
    "$AFTER" --root "$WORK/seed" -q add "$src/deps" --name deps >/dev/null
    "$AFTER" --root "$WORK/seed" -q add "$src/app" --name app >/dev/null
    "$AFTER" --root "$WORK/seed" -q export app --with-parents -o "$WORK/chain.tar.zst" >/dev/null
}

add_cmd() {
    local bin=$1 root=$WORK/add-root
    echo "rm -rf '$root' && for n in base deps app; do '$bin' --root '$root' -q add '$WORK/src/'\$n --name \$n || exit 1; done"
}

import_cmd() {
    local bin=$1 root=$WORK/import-root
    echo "rm -rf '$root' && '$bin' --root '$root' -q import '$WORK/chain.tar.zst'"
}

compare() {
    local label=$1 make=$2
    local before=() after=() r
    bash -c "$($make "$BEFORE")" >/dev/null && bash -c "$($make "$AFTER")" >/dev/null  # warm up
    for r in $(seq "$RUNS"); do
        before+=("$(wall_and_cpu_of "$($make "$BEFORE")")")
        after+=("$(wall_and_cpu_of "$($make "$AFTER")")")
    done
    local col name mb ma
    for col in 1 2; do
        name=$([[ $col == 1 ]] && echo wall || echo cpu)
        mb=$(printf '%s\n' "${before[@]}" | cut -d' ' -f"$col" | median)
        ma=$(printf '%s\n' "${after[@]}" | cut -d' ' -f"$col" | median)
        printf '%-7s %-4s before median %6.3f s (runs: %s)\n' "$label" "$name" "$mb" \
            "$(printf '%s\n' "${before[@]}" | cut -d' ' -f"$col" | tr '\n' ' ')"
        printf '%-7s %-4s after  median %6.3f s (runs: %s)\n' "$label" "$name" "$ma" \
            "$(printf '%s\n' "${after[@]}" | cut -d' ' -f"$col" | tr '\n' ' ')"
        printf '%-7s %-4s after / before: %.3f  (target <= 1.10)\n' "$label" "$name" "$(echo "$ma / $mb" | bc -l)"
    done
}

main() {
    setup
    compare add add_cmd
    compare import import_cmd
}

main "$@"
