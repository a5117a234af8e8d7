#!/usr/bin/env bash
# Before and after: two builds of hallrelay measured in the same run, interleaved, so that a
# change's effect is a ratio rather than two absolute numbers from different moments of a
# shared machine.
#
# Usage: bash benches/compare.sh OLD_BIN NEW_BIN [ROUNDS]
#
#   ingest  a burst of 256 candidates x HALLRELAY_COMPARE_BURST (default 16) saves of 16 KiB
#           against a fresh box of each build, ROUNDS times (default 3), alternating: saves/s,
#           p99 (NEW's `loadtest` drives both, so the load is the same), the store writer's
#           busy time per save, from the box's own commit counters (the writer is serial, so
#           this is what caps ingest when the machine has CPU to spare), and the box's CPU per
#           save over all its threads, user + system, from /proc (what caps ingest when the
#           cores are full, as they are when the load generator shares them);
#   drain   an outbox of 500 x HALLRELAY_COMPARE_DRAIN_EACH (default 40, so 20,000) pending
#           1 KiB autosaves, stored by each build itself (the same load, from NEW's
#           `loadtest`), then drained by that build into a fresh reference cloud over loopback:
#           seconds, commits per delivered autosave (from the box's own status), and the box's
#           peak RSS (VmHWM).
#
# Each build stores its own data, so the two may have different store formats (issue 24's
# journal); they must speak the same HTTP API and read the same venue key. A counter one build
# does not report prints as "?". Loopback only, mDNS off; everything it starts is stopped and
# its temp dir removed on exit.
#
# Before/after for a branch, OLD built from main in a scratch worktree:
#   git worktree add /tmp/hr-old main && (cd /tmp/hr-old && cargo build --release --bin hallrelay)
#   cargo build --release --bin hallrelay
#   bash benches/compare.sh /tmp/hr-old/target/release/hallrelay target/release/hallrelay 3
set -Eeuo pipefail
trap 'echo "compare: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

old=${1:?usage: compare.sh OLD_BIN NEW_BIN [ROUNDS]}
new=${2:?usage: compare.sh OLD_BIN NEW_BIN [ROUNDS]}
rounds=${3:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/hallrelay-compare.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start BIN LOG ARGS...: starts BIN in the background, waits for its listening line and sets
# addr, pin and pid.
start() {
    local bin=$1 log=$2
    shift 2
    : >"$log"
    RUST_LOG=warn,hallrelay=info "$bin" "$@" >/dev/null 2>"$log" &
    pid=$!
    pids+=("$pid")
    local line=""
    for _ in $(seq 400); do
        line=$(grep -m1 ' listening ' "$log" || true)
        [ -n "$line" ] && break
        sleep 0.05
    done
    [ -n "$line" ] || { echo "compare: $bin did not start:" >&2; cat "$log" >&2; exit 1; }
    addr=$(sed -n 's/.* addr=\([^ ]*\).*/\1/p' <<<"$line")
    pin=$(sed -n 's/.* pin=\([^ ]*\).*/\1/p' <<<"$line")
}

stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

serve_args=(serve --listen 127.0.0.1:0 --no-mdns --client-rate-limit 0 --max-connections-per-client 100000)

# cpu_ticks PID: the process's user + system CPU so far, all threads, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)

# json EXPR: EXPR of the JSON document d on stdin, or "?" when the document lacks a field.
json() { python3 -c "import json,sys
d=json.load(sys.stdin)
try: print($1)
except (KeyError, TypeError, ZeroDivisionError): print('?')"; }

burst=${HALLRELAY_COMPARE_BURST:-16}
echo "compare: ingest, $rounds rounds of a 256 x $burst burst of 16 KiB per build" >&2
declare -A rates busy cpu
for round in $(seq "$rounds"); do
    for which in old new; do
        bin=${!which}
        dir=$work/ingest-$which-$round
        mkdir -p "$dir"
        printf 'min_free_bytes = 0\n' >"$dir/box.toml"
        start "$bin" "$dir/box.log" "${serve_args[@]}" --config "$dir/box.toml" --data-dir "$dir/data"
        before=$(cpu_ticks "$pid")
        out=$("$new" loadtest --box "https://$addr" --pin "$pin" --venue-key-file "$dir/data/venue.key" \
            --candidates 256 --burst "$burst" --size 16384 --duration 120s --json 2>/dev/null || true)
        rate=$(json 'round(d["result"]["saves_per_sec"])' <<<"$out")
        p99=$(json 'round(d["result"]["latency_ms"]["p99"], 1)' <<<"$out")
        errors=$(json 'd["result"]["error_count"]' <<<"$out")
        saves=$(json 'd["result"]["ok"]' <<<"$out")
        box_us=$(awk -v t0="$before" -v t1="$(cpu_ticks "$pid")" -v hz="$tick" -v n="$saves" \
            'BEGIN { if (n > 0) printf "%.1f", (t1 - t0) * 1e6 / hz / n; else print "?" }')
        admin=$("$new" token --data-dir "$dir/data" --admin 2>/dev/null)
        status=$(curl -sk --pinnedpubkey "$pin" -H "Authorization: Bearer $admin" "https://$addr/v1/status")
        us=$(json 'round((d["commits"]["apply_micros"] + d["commits"]["commit_micros"]) / d["commits"]["requests"], 1)' <<<"$status")
        echo "compare: round $round $which: $rate saves/s, p99 $p99 ms, $errors errors, writer busy $us µs/save, box CPU $box_us µs/save" >&2
        rates[$which]+="$rate "
        busy[$which]+="$us "
        cpu[$which]+="$box_us "
        stop "$pid"
        rm -rf "$dir"
    done
done

drain_each=${HALLRELAY_COMPARE_DRAIN_EACH:-40}
drain_total=$((500 * drain_each))
echo "compare: drain, $drain_total pending autosaves of 1 KiB" >&2
declare -A drains
for which in old new; do
    bin=${!which}
    dir=$work/drain-$which
    mkdir -p "$dir"
    # The outbox, stored by this build (no cloud configured yet, so everything stays pending).
    printf 'min_free_bytes = 0\n' >"$dir/seed.toml"
    start "$bin" "$dir/seed.log" "${serve_args[@]}" --config "$dir/seed.toml" --data-dir "$dir/data"
    "$new" loadtest --box "https://$addr" --pin "$pin" --venue-key-file "$dir/data/venue.key" \
        --candidates 500 --burst "$drain_each" --size 1024 --duration 600s --json >/dev/null 2>&1 || true
    stop "$pid"
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/appliance.token"; echo >>"$dir/appliance.token")
    start "$new" "$dir/cloud.log" cloud --data-dir "$dir/cloud" --listen 127.0.0.1:0 \
        --appliance-token-file "$dir/appliance.token" --tls
    cloud_pid=$pid
    {
        echo "cloud = \"https://$addr\""
        echo "cloud_token_file = \"$dir/appliance.token\""
        echo "cloud_pin = \"$pin\""
        echo "min_free_bytes = 0"
    } >"$dir/box.toml"
    started=$(date +%s.%N)
    start "$bin" "$dir/box.log" "${serve_args[@]}" --config "$dir/box.toml" --data-dir "$dir/data"
    admin=$("$new" token --data-dir "$dir/data" --admin 2>/dev/null)
    while :; do
        status=$(curl -sk --pinnedpubkey "$pin" -H "Authorization: Bearer $admin" "https://$addr/v1/status" || true)
        pending=$(json 'd["pending"]["count"]' <<<"$status" 2>/dev/null || echo "?")
        [ "$pending" = 0 ] && break
        if python3 -c "import sys, time; sys.exit(time.time() - $started < ${HALLRELAY_COMPARE_DRAIN_LIMIT:-1800})"; then
            echo "compare: $which did not drain within ${HALLRELAY_COMPARE_DRAIN_LIMIT:-1800} s ($pending pending)" >&2
            exit 1
        fi
        sleep 0.2
    done
    secs=$(python3 -c "import time; print(round(time.time() - $started, 2))")
    commits=$(json 'd["commits"]["count"]' <<<"$status")
    delivered=$(json 'd["delivered"]' <<<"$status")
    rss=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
    echo "compare: drain $which: $delivered delivered in $secs s, $commits commits, peak RSS $rss MiB" >&2
    drains[$which]="$secs $commits $delivered $rss"
    stop "$pid"
    stop "$cloud_pid"
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${rates[old]}")
mn=$(median "${rates[new]}")
read -r so co do_ ro <<<"${drains[old]}"
read -r sn cn dn rn <<<"${drains[new]}"
echo
echo "| measure | old | new | new / old |"
echo "| --- | ---: | ---: | ---: |"
awk -v a="$mo" -v b="$mn" 'BEGIN { printf "| ingest, median saves/s | %d | %d | %.2f |\n", a, b, b / a }'
num='^[0-9]+([.][0-9]+)?$'
# ratio_row LABEL OLD NEW: a row of two µs figures and their ratio; "?" where a build did not
# report the figure.
ratio_row() {
    if [[ $2 =~ $num && $3 =~ $num ]]; then
        awk -v l="$1" -v a="$2" -v b="$3" 'BEGIN { printf "| %s | %.1f | %.1f | %.2f |\n", l, a, b, b / a }'
    else
        echo "| $1 | $2 | $3 | ? |"
    fi
}
ratio_row "ingest, median writer busy µs per save" "$(median "${busy[old]}")" "$(median "${busy[new]}")"
ratio_row "ingest, median box CPU µs per save (all threads)" "$(median "${cpu[old]}")" "$(median "${cpu[new]}")"
awk -v a="$so" -v b="$sn" -v n="$drain_total" 'BEGIN { printf "| drain of %d, seconds | %.2f | %.2f | %.2f |\n", n, a, b, b / a }'
awk -v a="$co" -v b="$cn" -v da="$do_" -v db="$dn" \
    'BEGIN { printf "| drain, commits per delivery | %.3f | %.3f | %.2f |\n", a / da, b / db, (b / db) / (a / da) }'
awk -v a="$ro" -v b="$rn" 'BEGIN { printf "| drain, peak RSS of the box, MiB | %.1f | %.1f | %.2f |\n", a, b, b / a }'
echo
echo "ingest rounds: old ${rates[old]}/ new ${rates[new]}(saves/s)"
