#!/usr/bin/env bash
# Replay goodput: how fast the box empties its outbox into the cloud once the uplink is back.
#
# Usage: bash benches/replay-goodput.sh [--quick]
#
# Three runs, each on a fresh box and a fresh reference cloud (`hallrelay cloud --tls`):
#   1. loopback   box and cloud on 127.0.0.1, nothing shaped: what the software can do;
#   2. shaped     box and cloud in two network namespaces joined by a veth pair shaped
#                 with tc tbf to 10 Mbit/s each way: goodput as a share of the link
#                 (target >= 0.90);
#   3. capped     loopback again with `replay_rate_limit = 2000000`: the box's own
#                 bandwidth cap must hold (achieved / cap between 0.85 and 1.05).
# Goodput counts payload bytes only (not HTTP, TLS, TCP or IP overhead) and is timed on the
# box's own clock: from the moment its status says the uplink went up (`uplink.since`) to
# its last delivery (`last_delivery_at`), once `pending.count` is 0.
#
# Procedure of one run. The box backs off up to 30 s between probes while the cloud is away,
# which would make "start the cloud, wait for the box to notice" slow and noisy. So:
# (a) start the box with no cloud configured (it only queues), load N distinct 64 KiB
# autosaves with 8 parallel candidates; (b) stop it; (c) start the cloud; (d) restart the
# box with the cloud configured: it probes at once and replays the outbox it kept;
# (e) poll its status every 100 ms until nothing is pending.
#
# What this script owns, and removes on exit (trap, also on failure or Ctrl-C):
#   - one temp dir (payloads, data dirs, logs), from mktemp;
#   - the hallrelay processes it starts, by pid;
#   - two network namespaces, hrbench-box-<pid> (10.231.0.1/24) and hrbench-cloud-<pid>
#     (10.231.0.2/24), and the veth pair between them, created inside them (the veth never
#     exists in the root namespace; deleting the namespaces deletes it).
# Traffic stays on loopback or inside those namespaces; no other interface is touched.
# mDNS stays off (--no-mdns).
#
# Needs root (namespaces, tc). Without root it prints SKIPPED and exits 0, or exits 1 when
# HALLRELAY_REQUIRE_PRIVILEGED=1 (as CI sets). A setup failure exits non-zero. Missing a
# target is reported in the table, not in the exit code: this is a measurement.
# HALLRELAY_BIN=path uses that binary instead of `cargo build --release`.
set -Eeuo pipefail
# Any unexpected failure is loud, then the EXIT trap cleans up.
trap 'echo "replay-goodput: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

readonly PAYLOAD_SIZE=65536          # bytes per autosave
readonly CANDIDATES=8                # parallel loading streams, one candidate each
readonly EXAM=bench
readonly LINK_RATE=10mbit            # tc's mbit is 10^6 bit/s
readonly LINK_BYTES_PER_SEC=1250000  # the same, in payload-comparable bytes/s
readonly RATE_CAP=2000000            # replay_rate_limit for the capped run, bytes/s
readonly CONCURRENCY=4               # replay_concurrency
readonly SKIP_SECS=1.5               # "sustained" excludes this much of the start
readonly BOX_IP=10.231.0.1
readonly CLOUD_IP=10.231.0.2

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h | --help)
            sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "replay-goodput: unknown argument $arg (usage: $0 [--quick])" >&2
            exit 64
            ;;
    esac
done
if [ "$quick" = 1 ]; then
    count=192 # 12 MiB
else
    count=768 # 48 MiB
fi
readonly count
readonly total_bytes=$((count * PAYLOAD_SIZE))

if [ "$(id -u)" != 0 ]; then
    if [ "${HALLRELAY_REQUIRE_PRIVILEGED:-}" = 1 ]; then
        echo "replay-goodput: FAILED: needs root (network namespaces, tc) and" \
            "HALLRELAY_REQUIRE_PRIVILEGED=1 forbids skipping" >&2
        exit 1
    fi
    echo "################################################################"
    echo "# SKIPPED replay-goodput: needs root (network namespaces, tc)   #"
    echo "################################################################"
    exit 0
fi

for tool in ip tc curl python3 split awk; do
    if ! command -v "$tool" >/dev/null; then
        echo "replay-goodput: setup failed: $tool not found" \
            "(ip and tc are in the iproute2 package)" >&2
        exit 1
    fi
done

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${HALLRELAY_BIN:-}" ]; then
    bin=$HALLRELAY_BIN
else
    echo "replay-goodput: cargo build --release" >&2
    (cd "$repo" && cargo build --release --quiet)
    bin=$repo/target/release/hallrelay
fi
[ -x "$bin" ] || {
    echo "replay-goodput: setup failed: no binary at $bin" >&2
    exit 1
}
export RUST_LOG=info

# ---------------------------------------------------------------------------------------
# Owned resources and their cleanup.

work=""
pids=()
namespaces=()
ns_box=hrbench-box-$$
ns_cloud=hrbench-cloud-$$

cleanup() {
    local rc=$?
    trap - ERR
    set +e
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    local ns
    for ns in "${namespaces[@]}"; do
        ip netns delete "$ns" 2>/dev/null
    done
    if [ -n "$work" ]; then
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a message and the tail of the given logs, then exits 1 (the trap cleans up).
die() {
    local message=$1
    shift
    echo "replay-goodput: FAILED: $message" >&2
    local log
    for log in "$@"; do
        if [ -f "$log" ]; then
            echo "--- last lines of $log" >&2
            tail -n 15 "$log" >&2
        fi
    done
    exit 1
}

# start_bg LOG CMD...: runs CMD in the background with stderr to LOG; sets started_pid.
# `ip netns exec` execs into the program, so the pid is hallrelay's own.
started_pid=""
start_bg() {
    local log=$1
    shift
    "$@" >/dev/null 2>"$log" &
    started_pid=$!
    pids+=("$started_pid")
}

# stop_bg PID: SIGTERM (the box drains and closes its store), SIGKILL after 10 s.
stop_bg() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# forget_pid PID: drops a pid that has been reaped from the cleanup list.
forget_pid() {
    local kept=() p
    for p in "${pids[@]}"; do
        [ "$p" = "$1" ] || kept+=("$p")
    done
    pids=("${kept[@]}")
}

# wait_listening LOG PID: waits for the ` listening ` line; sets listen_addr and listen_pin.
listen_addr=""
listen_pin=""
wait_listening() {
    local log=$1 pid=$2 line="" field
    for _ in $(seq 200); do
        line=$(grep -m1 ' listening ' "$log" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening" "$log"
        sleep 0.05
    done
    [ -n "$line" ] || die "no listening line within 10 s" "$log"
    for field in $line; do
        case "$field" in
            addr=*) listen_addr=${field#addr=} ;;
            pin=*) listen_pin=${field#pin=} ;;
        esac
    done
    if [ -z "$listen_addr" ] || [ -z "$listen_pin" ]; then
        die "cannot parse: $line" "$log"
    fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/hallrelay-replay-goodput.XXXXXX")

# ---------------------------------------------------------------------------------------
# Shared inputs: distinct random payloads, the status poller, the loader.

mkdir "$work/payloads"
head -c "$total_bytes" /dev/urandom | split -b "$PAYLOAD_SIZE" -a 5 -d - "$work/payloads/p"
payloads=("$work"/payloads/p*)
[ "${#payloads[@]}" = "$count" ] || die "made ${#payloads[@]} payloads, wanted $count"

# load.sh ADDR PIN HEADER_FILE CANDIDATE FIRST STRIDE COUNT DIR EXAM: PUTs payloads FIRST,
# FIRST+STRIDE, ... (below COUNT) from DIR as seq 1, 2, ... of CANDIDATE in EXAM; exits
# non-zero on the first answer that is not 201.
cat >"$work/load.sh" <<'EOF'
set -euo pipefail
addr=$1 pin=$2 header=$3 candidate=$4 first=$5 stride=$6 count=$7 dir=$8 exam=$9
seq=1
for ((i = first; i < count; i += stride)); do
    file=$(printf '%s/p%05d' "$dir" "$i")
    code=$(curl -sk --pinnedpubkey "$pin" -H @"$header" -o /dev/null -w '%{http_code}' \
        -X PUT --data-binary @"$file" \
        "https://$addr/v1/exams/$exam/candidates/$candidate/autosaves/$seq")
    if [ "$code" != 201 ]; then
        echo "PUT $candidate/$seq answered $code" >&2
        exit 1
    fi
    seq=$((seq + 1))
done
EOF

# poll.py ADDR PIN HEADER_FILE COUNT BYTES TIMEOUT SKIP: polls /v1/status every 100 ms until
# nothing is pending; checks COUNT were delivered without conflicts; prints
# "elapsed_s goodput_Bps sustained_Bps states" (sustained: from SKIP s after the uplink came
# up to the last delivery, "-" if the run was too short; states: the uplink states seen,
# e.g. "unknown>up").
cat >"$work/poll.py" <<'EOF'
import json, subprocess, sys, time
from datetime import datetime, timezone

addr, pin, header = sys.argv[1:4]
count, total, timeout, skip = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])

def stamp(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()

def status():
    done = subprocess.run(
        ["curl", "-sk", "--max-time", "2", "--pinnedpubkey", pin, "-H", "@" + header,
         f"https://{addr}/v1/status"], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout)
    except ValueError:
        return None

deadline = time.time() + timeout
t0, states, samples, s = None, [], [], None
while True:
    tick = time.time()
    if tick > deadline:
        sys.exit(f"pending not drained within {timeout:.0f} s; last status: {json.dumps(s)}")
    s = status()
    if s is not None:
        state = s["uplink"]["state"]
        if not states or states[-1] != state:
            states.append(state)
        if state == "refused":
            sys.exit(f"the cloud refused the box's credential: {s['uplink']}")
        if state == "up" and t0 is None:
            t0 = stamp(s["uplink"]["since"])
        samples.append((time.time(), s["pending"]["bytes"]))
        if t0 is not None and s["pending"]["count"] == 0:
            break
    time.sleep(max(0.0, 0.1 - (time.time() - tick)))

if s["delivered"] != count or s["conflicts"] != 0:
    sys.exit(f"expected {count} delivered and no conflicts: {json.dumps(s)}")
t1 = stamp(s["last_delivery_at"])
elapsed = t1 - t0
sustained = "-"
for at, pending in samples:
    if at >= t0 + skip and t1 - at >= 1.0:
        sustained = f"{pending / (t1 - at):.0f}"
        break
print(f"{elapsed:.3f} {total / elapsed:.0f} {sustained} {'>'.join(states)}")
EOF

# ---------------------------------------------------------------------------------------
# One run.

# run_case NAME WHERE RATE_LIMIT TIMEOUT: WHERE is "loopback" or "netns"; RATE_LIMIT is
# bytes/s or "". Sets result (the poller's line).
result=""
run_case() {
    local name=$1 where=$2 rate_limit=$3 timeout=$4
    local dir=$work/$name in_box=() in_cloud=() cloud_listen=127.0.0.1:0
    if [ "$where" = netns ]; then
        in_box=(ip netns exec "$ns_box")
        in_cloud=(ip netns exec "$ns_cloud")
        cloud_listen=$CLOUD_IP:0
    fi
    mkdir -p "$dir"
    local box_log=$dir/box.log cloud_log=$dir/cloud.log

    # (a) The box alone: it queues everything in its outbox.
    printf 'min_free_bytes = 0\n' >"$dir/queue.toml"
    start_bg "$box_log" "${in_box[@]}" "$bin" serve --config "$dir/queue.toml" \
        --data-dir "$dir/box" --listen 127.0.0.1:0 --no-mdns --client-rate-limit 0 --max-connections-per-client 100000
    local box_pid=$started_pid
    wait_listening "$box_log" "$box_pid"
    local box_addr=$listen_addr box_pin=$listen_pin

    local k loaders=() header token
    for ((k = 0; k < CANDIDATES; k++)); do
        header=$dir/c$k.header
        token=$("$bin" token --data-dir "$dir/box" --exam "$EXAM" --candidate "c$k" 2>/dev/null)
        printf 'Authorization: Bearer %s\n' "$token" >"$header"
        "${in_box[@]}" bash "$work/load.sh" "$box_addr" "$box_pin" "$header" "c$k" "$k" \
            "$CANDIDATES" "$count" "$work/payloads" "$EXAM" 2>>"$dir/load.log" &
        loaders+=("$!")
        pids+=("$!")
    done
    for k in "${loaders[@]}"; do
        wait "$k" || die "$name: loading the box failed" "$dir/load.log" "$box_log"
        forget_pid "$k"
    done

    # (b) Stop it; its outbox survives in the store.
    stop_bg "$box_pid"

    # (c) The cloud, with the box's credential.
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/appliance.token")
    echo >>"$dir/appliance.token"
    start_bg "$cloud_log" "${in_cloud[@]}" "$bin" cloud --data-dir "$dir/cloud" \
        --listen "$cloud_listen" --appliance-token-file "$dir/appliance.token" --tls
    wait_listening "$cloud_log" "$started_pid"
    local cloud_addr=$listen_addr cloud_pin=$listen_pin

    # (d) The box again, now with the cloud: it probes at once and replays.
    {
        echo "cloud = \"https://$cloud_addr\""
        echo "cloud_token_file = \"$dir/appliance.token\""
        echo "cloud_pin = \"$cloud_pin\""
        echo "replay_concurrency = $CONCURRENCY"
        [ -z "$rate_limit" ] || echo "replay_rate_limit = $rate_limit"
        echo "min_free_bytes = 0"
    } >"$dir/replay.toml"
    : >"$box_log"
    start_bg "$box_log" "${in_box[@]}" "$bin" serve --config "$dir/replay.toml" \
        --data-dir "$dir/box" --listen 127.0.0.1:0 --no-mdns --client-rate-limit 0 --max-connections-per-client 100000
    box_pid=$started_pid
    wait_listening "$box_log" "$box_pid"
    [ "$listen_pin" = "$box_pin" ] || die "$name: the box's pin changed on restart" "$box_log"

    # (e) Poll until the outbox is empty.
    token=$("$bin" token --data-dir "$dir/box" --admin 2>/dev/null)
    printf 'Authorization: Bearer %s\n' "$token" >"$dir/admin.header"
    result=$("${in_box[@]}" python3 "$work/poll.py" "$listen_addr" "$box_pin" \
        "$dir/admin.header" "$count" "$total_bytes" "$timeout" "$SKIP_SECS" 2>"$dir/poll.log") ||
        die "$name: replay did not complete" "$dir/poll.log" "$box_log" "$cloud_log"

    # Everything down before the next run.
    local pid
    for pid in "${pids[@]}"; do
        stop_bg "$pid"
    done
}

# ---------------------------------------------------------------------------------------
# The shaped link: two namespaces, a veth pair, tbf on both ends.

setup_link() {
    ip netns add "$ns_box" || die "cannot create network namespace $ns_box"
    namespaces+=("$ns_box")
    ip netns add "$ns_cloud" || die "cannot create network namespace $ns_cloud"
    namespaces+=("$ns_cloud")
    ip -n "$ns_box" link set lo up
    ip -n "$ns_cloud" link set lo up
    # Created inside the box's namespace with its peer inside the cloud's.
    ip -n "$ns_box" link add veth-box type veth peer name veth-cloud netns "$ns_cloud"
    ip -n "$ns_box" addr add "$BOX_IP/24" dev veth-box
    ip -n "$ns_cloud" addr add "$CLOUD_IP/24" dev veth-cloud
    ip -n "$ns_box" link set veth-box up
    ip -n "$ns_cloud" link set veth-cloud up
    # The box's egress carries the payloads; the cloud's only answers and ACKs, but shaping
    # both makes it a symmetric 10 Mbit/s link.
    tc -n "$ns_box" qdisc add dev veth-box root tbf rate "$LINK_RATE" burst 32kbit latency 400ms
    tc -n "$ns_cloud" qdisc add dev veth-cloud root tbf rate "$LINK_RATE" burst 32kbit latency 400ms
}

setup_link

mib=$(awk -v b="$total_bytes" 'BEGIN { printf "%.0f", b / 1048576 }')
echo "replay-goodput: $count autosaves x $((PAYLOAD_SIZE / 1024)) KiB = $mib MiB per run," \
    "replay_concurrency $CONCURRENCY" >&2

echo "replay-goodput: run 1/3 loopback" >&2
run_case loopback loopback "" 120
r_loop=$result
echo "replay-goodput: run 2/3 shaped ($LINK_RATE)" >&2
# Four times the ideal transfer time, plus slack for starts.
run_case shaped netns "" $((total_bytes * 4 / LINK_BYTES_PER_SEC + 30))
r_shaped=$result
echo "replay-goodput: run 3/3 capped (replay_rate_limit $RATE_CAP)" >&2
run_case capped loopback "$RATE_CAP" $((total_bytes * 4 / RATE_CAP + 30))
r_capped=$result

# ---------------------------------------------------------------------------------------
# The table.

# row LABEL LIMIT_BPS(or 0) RESULT TARGET LOW HIGH METRIC: METRIC "overall" or "sustained"
# picks which ratio the verdict is judged on.
row() {
    local label=$1 limit=$2 line=$3 target=$4 low=$5 high=$6 metric=$7
    local elapsed goodput sustained states
    read -r elapsed goodput sustained states <<<"$line"
    awk -v label="$label" -v limit="$limit" -v el="$elapsed" -v gp="$goodput" \
        -v su="$sustained" -v target="$target" -v low="$low" -v high="$high" \
        -v metric="$metric" -v states="$states" '
    function mbs(x) { return sprintf("%.2f", x / 1e6) }
    BEGIN {
        lim = limit > 0 ? mbs(limit) : "none"
        ratio = limit > 0 ? sprintf("%.3f", gp / limit) : "-"
        sratio = (limit > 0 && su != "-") ? sprintf("%.3f", su / limit) : "-"
        sus = su != "-" ? mbs(su) : "-"
        verdict = "-"
        if (target != "-") {
            judged = metric == "sustained" ? sratio : ratio
            verdict = (judged != "-" && judged + 0 >= low && judged + 0 <= high) ? "ok" : "MISSED"
        }
        if (states ~ /up>down/) verdict = verdict " (uplink went down mid-run)"
        printf "| %s | %s | %.2f | %s | %s | %s | %s | %s | %s |\n",
            label, lim, el, mbs(gp), sus, ratio, sratio, target, verdict
    }'
}

echo
echo "### Replay goodput ($mib MiB of 64 KiB autosaves, replay_concurrency $CONCURRENCY, TLS)"
echo
echo "| run | limit (MB/s) | time (s) | goodput (MB/s) | sustained (MB/s) | goodput / limit | sustained / limit | target | result |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
row "loopback" 0 "$r_loop" "-" 0 0 overall
row "veth, tc tbf $LINK_RATE" "$LINK_BYTES_PER_SEC" "$r_shaped" "goodput >= 0.90" 0.9 1e9 overall
row "loopback, replay_rate_limit $RATE_CAP" "$RATE_CAP" "$r_capped" "sustained 0.85-1.05" 0.85 1.05 sustained
echo
echo "MB = 10^6 bytes; payload bytes only. Time: uplink up -> last delivery, on the box's clock."
echo "Sustained: from ${SKIP_SECS} s after the uplink came up to the last delivery (leaves out"
echo "TCP/TLS start-up and the rate limiter's initial burst of one second's worth)."
