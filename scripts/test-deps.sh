#!/usr/bin/env bash
# Install the tools `cargo test` drives, when absent (Debian/Ubuntu, as root):
# GNU tar, bsdtar (libarchive-tools: the second reference reader), zstd and
# pzstd, sqlite3, mkfs.ext4/debugfs (realistic ext4 uppers), strace,
# script, taskset, flock, GNU time, python3, groff; and for push/pull against
# a real OCI registry: docker-registry (Distribution), skopeo (a third-party
# client reading what we push), htpasswd (apache2-utils) and openssl (a
# private CA); ssh-keygen (openssh-client) makes and checks signing keys and
# signatures. The registry tests fail, naming this script, when one of
# theirs is missing (MSB_SKIP_OCI=1 skips them instead).
set -euo pipefail

need=()
for pair in tar:tar bsdtar:libarchive-tools zstd:zstd pzstd:zstd sqlite3:sqlite3 mkfs.ext4:e2fsprogs debugfs:e2fsprogs \
    strace:strace script:bsdutils taskset:util-linux flock:util-linux python3:python3 \
    groff:groff-base docker-registry:docker-registry skopeo:skopeo \
    htpasswd:apache2-utils openssl:openssl ssh-keygen:openssh-client; do
    tool=${pair%%:*} package=${pair#*:}
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/sbin:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || need+=("$package")
done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "== installing: ${need[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "missing tools: ${need[*]}; run this script as root on Debian/Ubuntu (apt-get), or install them" >&2
    exit 1
fi
