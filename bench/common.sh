# Helpers the benchmark scripts share: logging, timing a command, medians.
# Sourced, not run.

log() { printf '%s\n' "$*" >&2; }

# Seconds taken by a shell command, to stdout.
time_of() {
    local start end
    start=$(date +%s.%N)
    bash -c "$1" >/dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); if (NR % 2) print v[m]; else print (v[m] + v[m + 1]) / 2 }'; }

# Wall seconds and CPU seconds (user + sys, children included) of a shell
# command, to stdout as "WALL CPU" (GNU time).
cpu_time_of() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%e %U %S' -o "$out" bash -c "$1" >/dev/null
    awk '{ printf "%s %.2f\n", $1, $2 + $3 }' "$out"
    rm -f "$out"
}
