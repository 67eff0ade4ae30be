#!/usr/bin/env bash
# Repeatable CPU cost of the actor path against the raw driver: instructions per operation,
# counted by valgrind's callgrind (the same for the same binary and inputs, whatever else the
# machine does — unlike the CPU times of `cargo bench --bench lucid_bench`, which swing by
# ±15 % on a small shared VM). Each workload runs alone at 64 in flight, once per path; a
# zero-length run of the same path is subtracted, so set-up is not counted.
#
# usage: scripts/bench-instructions.sh [exact workload name, e.g. 'redis/get/set'] ...
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install -y valgrind" >&2; exit 1; }

bin=$(cargo bench --bench lucid_bench --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "lucid_bench" and m.get("executable"):
        print(m["executable"])')
[ -n "$bin" ] || { echo "could not build the benchmark" >&2; exit 1; }

workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=("redis/get/set" "redis/get/set via mailbox" "redis/rate-limit check" "redis/lock acquire+release" "redis/publish")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# instructions and ops of one run: count <path> <seconds> <workload>
count() {
    local out="$tmp/cg.out" log="$tmp/log"
    LUCID_BENCH_ONLY="$1" LUCID_BENCH_SECONDS="$2" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" "$3\$" >"$log" 2>&1
    local ir ops
    ir=$(grep -E '^summary:' "$out" | awk '{print $2}')
    ops=$(grep -E " $1: [0-9]+ ops" "$log" | awk '{print $(NF-1)}')
    echo "$ir ${ops:-0}"
}

printf '%-28s %14s %14s %8s\n' workload "actor instr/op" "direct instr/op" ratio
for w in "${workloads[@]}"; do
    declare -A per_op=()
    for path in actor direct; do
        read -r base _ < <(count "$path" 0 "$w")
        read -r total ops < <(count "$path" 1 "$w")
        per_op[$path]=$(python3 -c "print(round(($total - $base) / max($ops, 1)))")
    done
    ratio=$(python3 -c "print(f'{${per_op[actor]} / ${per_op[direct]}:.3f}')")
    printf '%-28s %14s %14s %8s\n' "$w" "${per_op[actor]}" "${per_op[direct]}" "$ratio"
done
