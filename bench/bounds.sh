#!/usr/bin/env bash
# Import memory against the 64 MiB target (issue 23): peak RSS (GNU time's
# maximum resident set) of `import` for
#   - a chain of 32,767 snapshots of 4 KiB uppers,
#   - a 100,000-snapshot chain in one archive (bench/chain.py), then the
#     `export --with-parents` of it from the registry it went into, imported
#     back whole into an empty one (an archive holds at most 204,800 members),
#   - 1,024 snapshots with 1 MiB manifests, each carrying a 1 MB name.
#
#   bench/bounds.sh
#   CHAIN=10000 FLEET=0 FAT=128 bench/bounds.sh    # smaller (FLEET=0 skips the fleet)
#   BUILD=0 BIN=path/to/msb-registry bench/bounds.sh  # another binary, no build
#
# Memory, not time: the figures do not depend on what else runs on the machine.

set -euo pipefail

CHAIN=${CHAIN:-32767}
FLEET=${FLEET:-100000}
FAT=${FAT:-1024}

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=${BIN:-$TARGET_DIR/release/msb-registry}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/msb-bounds-bench.XXXXXX")}

cleanup() { [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

# Peak RSS in MiB of importing archive $2 into root $1.
peak_import() {
    /usr/bin/time -f '%M' -o "$WORK/rss" "$BIN" --root "$1" -q import "$2" >/dev/null 2>"$WORK/err" ||
        { cat "$WORK/err" >&2; return 1; }
    awk '{ printf "%.1f", $1 / 1024 }' "$WORK/rss"
}

report() { printf '%-62s peak RSS %7s MiB  (target <= 64 MiB)\n' "$1" "$2"; }

main() {
    if [[ ${BUILD:-1} == 1 ]]; then
        log "== build (release)"
        (cd "$REPO" && cargo build --release --quiet)
    fi
    log "== a chain of $CHAIN snapshots"
    python3 "$HERE/chain.py" "$CHAIN" | zstd -q -3 > "$WORK/chain.tar.zst"
    report "import of a $CHAIN-snapshot chain" "$(peak_import "$WORK/r-chain" "$WORK/chain.tar.zst")"
    rm -rf "$WORK/r-chain" "$WORK/chain.tar.zst"
    if [[ $FLEET -gt 0 ]]; then
        log "== a chain of $FLEET snapshots in one archive"
        python3 "$HERE/chain.py" "$FLEET" | zstd -q -3 > "$WORK/fleet.tar.zst"
        report "import of a $FLEET-snapshot chain, one archive" \
            "$(peak_import "$WORK/r-fleet" "$WORK/fleet.tar.zst")"
        rm -f "$WORK/fleet.tar.zst"
        local head
        head=$("$BIN" --root "$WORK/r-fleet" sql "SELECT name FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent = s.digest)" | tail -1)
        log "== export --with-parents of it, imported back into an empty registry"
        "$BIN" --root "$WORK/r-fleet" -q export "$head" --with-parents -o "$WORK/fleet-out.tar.zst"
        rm -rf "$WORK/r-fleet"
        report "import of its export --with-parents" \
            "$(peak_import "$WORK/r-back" "$WORK/fleet-out.tar.zst")"
        printf 'snapshots imported back: %s of %d\n' \
            "$("$BIN" --root "$WORK/r-back" sql "SELECT count(*) FROM snapshots" | tail -1)" "$FLEET"
        rm -rf "$WORK/r-back" "$WORK/fleet-out.tar.zst"
    fi
    [[ $FAT -gt 0 ]] || return 0
    log "== $FAT snapshots with 1 MiB manifests and 1 MB carried names"
    python3 "$HERE/fat.py" "$FAT" 1048000 1000000 | zstd -q -3 > "$WORK/fat.tar.zst"
    report "import of $FAT snapshots with 1 MiB manifests, 1 MB names" \
        "$(peak_import "$WORK/r-fat" "$WORK/fat.tar.zst")"
}

main "$@"
