#!/usr/bin/env bash
# The README's test command: install the tools the tests drive when they are
# absent (scripts/test-deps.sh: apt-get, as root or through sudo), then run
# the whole suite. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
export PATH="$PATH:/sbin:/usr/sbin"
exec cargo test "$@"
