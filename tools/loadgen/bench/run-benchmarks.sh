#!/usr/bin/env bash
# The benchmark runs recorded in BENCHMARKS.md, end to end: builds the release
# binaries, starts a private nats-server and a Herald gateway (and the
# WebSocket ceiling server), runs every measurement RUNS times, interleaving
# Herald and the ceiling so that machine noise hits both alike, and prints
# the medians. Everything listens on 127.0.0.1 only and every run is bounded.
#
#   tools/loadgen/bench/run-benchmarks.sh [OUTDIR]      (default: target/bench)
#
# Environment:
#   RUNS=3                 runs per measurement (medians are reported)
#   BENCH_NO_BUILD=1       use the release binaries already in target/release
#   BENCH_QUIET_PCT=15     before each run, wait until the machine is less
#                          busy than this (percent of all cores, over 2 s) ...
#   BENCH_QUIET_WAIT=300   ... for at most this many seconds (then run anyway
#                          and say so)
#   BENCH_ONLY="fanout window latency connections publish durable jetstream resume"
#                          a subset (add "wb0" for the ceiling with one send()
#                          per frame)
#   BENCH_DURABLE="1x1 1x16 16x4 64x4 128x8"   durable runs, clients x window
#
# The gateway runs with HERALD_APPS: the development app's credentials, with
# enable_client_publish and a client publish rate high enough not to limit
# the durable runs (client_publishes_per_second 1,000,000).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$root"
out=${1:-target/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
runs=${RUNS:-3}
quiet_pct=${BENCH_QUIET_PCT:-15}
quiet_wait=${BENCH_QUIET_WAIT:-300}
only=${BENCH_ONLY:-fanout window latency connections publish durable jetstream resume}
durable_configs=${BENCH_DURABLE:-1x1 1x16 16x4 64x4 128x8}
bench_apps='[{"id":"app-id","key":"app-key","secret":"app-secret","enable_client_messages":true,"enable_client_publish":true,"client_publishes_per_second":1000000}]'

results="$out/results.jsonl"
# A fresh file per run: the medians and the per-round ratios read all of it,
# and rows left by an earlier run in the same OUTDIR would be mixed in (its
# round numbers repeat).
: >"$results"
rel=target/release

want() { [[ " $only " == *" $1 "* ]]; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${BENCH_NO_BUILD:-}" != 1 ]; then
  log "cargo build --release (gateway, loadgen, ceilings)"
  cargo build -q --release -p herald-gateway -p herald-loadgen -p herald-ceilings
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- services crates || echo ' (+ uncommitted changes in services/ or crates/)')"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "nats-server: $(nats-server --version 2>&1)"
  echo "rustc: $(rustc --version)"
  echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
} >"$out/machine.txt"
cat "$out/machine.txt" >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Busy percent of the whole machine over 2 seconds.
busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local t0=0 t1=0 i
  for i in 1 2 3 4 5 6 7 8; do t0=$((t0 + a[i])); t1=$((t1 + b[i])); done
  local idle0=$((a[4] + a[5])) idle1=$((b[4] + b[5]))
  local dt=$((t1 - t0))
  [ "$dt" -gt 0 ] || { echo 0; return; }
  echo $(( (dt - (idle1 - idle0)) * 100 / dt ))
}

wait_quiet() {
  local start=$SECONDS pct
  while :; do
    pct=$(busy_pct)
    if [ "$pct" -lt "$quiet_pct" ]; then
      log "machine ${pct}% busy: go"
      return
    fi
    if [ $((SECONDS - start)) -ge "$quiet_wait" ]; then
      log "machine still ${pct}% busy after ${quiet_wait}s: running anyway (noisy)"
      return
    fi
    log "machine ${pct}% busy: waiting for quiet"
    sleep 5
  done
}

nats_pid="" gw_pid="" gw_port="" ceil_pid="" ceil_port="" store=""
start_herald() {
  store=$(mktemp -d)
  local nats_port; nats_port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$store" >"$out/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$nats_port") 2>/dev/null && break; sleep 0.1; done
  gw_port=$(free_port)
  NATS_URL="nats://127.0.0.1:$nats_port" HERALD_DEV=true HERALD_HOST=127.0.0.1 \
    HERALD_PORT="$gw_port" HERALD_PREFIX=bench RUST_LOG=warn HERALD_APPS="$bench_apps" \
    "$rel/herald-gateway" >"$out/gateway.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null || { log "gateway did not start"; cat "$out/gateway.log" >&2; exit 1; }
  log "herald: nats pid $nats_pid, gateway pid $gw_pid on port $gw_port"
}
stop_herald() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null || true
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
  [ -n "$store" ] && rm -rf "$store"
  gw_pid="" nats_pid="" store=""
}
start_ceiling() {
  ceil_port=$(free_port)
  "$rel/herald-ceiling-ws" --port "$ceil_port" "$@" >"$out/ceiling-ws.log" 2>&1 &
  ceil_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$ceil_port") 2>/dev/null && break; sleep 0.1; done
  log "ceiling-ws: pid $ceil_pid on port $ceil_port"
}
stop_ceiling() {
  [ -n "$ceil_pid" ] && kill -INT "$ceil_pid" 2>/dev/null && wait "$ceil_pid" 2>/dev/null || true
  ceil_pid=""
}
trap 'stop_herald; stop_ceiling' EXIT

# measure LABEL SERVER(herald|ceiling) ARGS...: one loadgen run, RESULT line
# appended to results.jsonl with the label.
measure() {
  local label=$1 server=$2; shift 2
  local port pids
  if [ "$server" = herald ]; then
    port=$gw_port; pids=(--server-pid "$gw_pid" --extra-pid "$nats_pid")
  else
    port=$ceil_port; pids=(--server-pid "$ceil_pid")
  fi
  wait_quiet
  log "$label: herald-loadgen $*"
  local logf="$out/$label.$(date +%s).log" code=0
  "$rel/herald-loadgen" --port "$port" "${pids[@]}" --deadline 240 "$@" >"$logf" 2>&1 || code=$?
  local line; line=$(grep '^RESULT ' "$logf" | tail -1 | cut -c8-)
  if [ -z "$line" ]; then
    log "$label: no result (exit $code); see $logf"
    line='{}'
  fi
  echo "$line" | jq -c --arg name "$label" --argjson code "$code" --arg server "${pids[1]}" \
    --argjson round "$r" '. + {bench: $name, exit: $code, server_pid: $server, round: $round}' >>"$results"
  grep -E '^  ' "$logf" | grep -E 'deliveries per sec|latency  |lost|duplicated  |bytes per connection|opened|acked per sec|ack latency|nacked|replayed events|complete sockets|problems|cpu|ok' >&2 || true
}

# ceiling_row LABEL ARGS...: one herald-ceiling-jetstream run of 5 s, its
# RESULT line appended to results.jsonl with the label and the round.
ceiling_row() {
  local label=$1; shift
  "$rel/herald-ceiling-jetstream" --runs 1 --duration 5 "$@" | tee "$out/$label.$r.log" >&2
  grep '^RESULT ' "$out/$label.$r.log" | cut -c8- | jq -c --arg name "$label" --argjson round "$r" '. + {bench: $name, round: $round}' >>"$results"
}

fanout_args=(fanout --subscribers 1000 --duration 10 --concurrency 1 --drain 10)
fanout4_args=(fanout --subscribers 1000 --duration 10 --concurrency 4 --drain 10)
# Flow control by delivery: at most W messages on their way to subscribers.
window_args() { echo fanout --subscribers 1000 --duration 10 --window "$1" --concurrency "$1" --drain 10; }
latency_args=(fanout --subscribers 100 --rate 1000 --duration 10 --concurrency 64 --drain 10)
pub1_args=(fanout --subscribers 1 --duration 10 --concurrency 1 --drain 5)
pub64_args=(fanout --subscribers 1 --duration 10 --concurrency 64 --drain 5)
conn_args=(connections --connections 10000 --ramp 1000 --connect-concurrency 200 --settle 3)

for r in $(seq "$runs"); do
  log "=== run $r of $runs ==="
  if want fanout; then
    start_herald; measure fanout-1000-herald herald "${fanout_args[@]}"
    measure fanout-1000-c4-herald herald "${fanout4_args[@]}"; stop_herald
    start_ceiling; measure fanout-1000-ceiling ceiling "${fanout_args[@]}"
    measure fanout-1000-c4-ceiling ceiling "${fanout4_args[@]}"; stop_ceiling
  fi
  if want wb0; then
    # The ceiling writing one send() per frame, as the gateway did before ea48b47.
    start_ceiling --write-buffer 0; measure fanout-1000-ceiling-wb0 ceiling "${fanout_args[@]}"
    measure fanout-1000-c4-ceiling-wb0 ceiling "${fanout4_args[@]}"; stop_ceiling
  fi
  if want window; then
    start_herald
    for w in 1 4 16; do measure "window-1000-w$w-herald" herald $(window_args $w); done
    stop_herald
    start_ceiling
    for w in 1 4 16; do measure "window-1000-w$w-ceiling" ceiling $(window_args $w); done
    stop_ceiling
  fi
  if want latency; then
    start_herald; measure latency-100x1000-herald herald "${latency_args[@]}"; stop_herald
    start_ceiling; measure latency-100x1000-ceiling ceiling "${latency_args[@]}"; stop_ceiling
  fi
  if want publish; then
    start_herald; measure publish-c1-herald herald "${pub1_args[@]}"
    measure publish-c64-herald herald "${pub64_args[@]}"; stop_herald
  fi
  if want connections; then
    start_herald; sleep 1; measure connections-10000-herald herald "${conn_args[@]}"; stop_herald
    start_ceiling; sleep 1; measure connections-10000-ceiling ceiling "${conn_args[@]}"; stop_ceiling
  fi
  if want durable; then
    # herald:publish on private channels, acks awaited: clients x window in
    # flight. Each configuration on fresh processes and a fresh stream, as
    # each JetStream ceiling run is: the duplicate window's message ids of
    # the runs before (600,000 and more in 2 minutes) cost NATS up to a
    # third more per publish (BENCHMARKS.md, 2026-12-03).
    for cw in $durable_configs; do
      c=${cw%x*} w=${cw#*x}
      start_herald
      measure "durable-c$c-w$w-herald" herald durable --clients "$c" --window "$w" --messages 10000000 --duration 5
      stop_herald
    done
  fi
  if want jetstream; then
    # One run per round, next to the durable runs: the ceiling they are read against.
    wait_quiet
    log "jetstream ceiling: 1 run per mode (round $r)"
    ceiling_row jetstream --size 128
    # The same with Herald's stream settings at 64 in flight.
    ceiling_row jetstream-w64 --size 128 --stream herald --mode pipelined --window 64
    # The ceiling for what NATS does for Herald's durable benchmark: messages
    # of the size Herald stores for 128 B of data (the envelope, ~346 B, and
    # the Nats-Msg-Id and Herald-Exclude-Socket headers, ~137 B), one
    # subject per client (128), and a live subscriber taking every
    # republished message, as the gateway does. Reported beside the ratio to
    # the plain ceiling above, which is the one the target is set against.
    ceiling_row jetstream-matched --size 480 --stream herald --mode pipelined --subjects 128 --live-subscriber
  fi
  if want resume; then
    # Replay of 10,000 stored events (HERALD_RESUME_MAX_EVENTS' default bound)
    # to 1 socket, then to 100 sockets resuming at once.
    start_herald
    measure resume-1-herald herald resume --sockets 1 --events 10000
    measure resume-100-herald herald resume --sockets 100 --events 10000
    stop_herald
  fi
done

# Medians per label.
jq_median='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;'
log "medians over $runs runs (results in $results)"
jq -s -r "$jq_median"'
  group_by(.bench)[] | . as $g | $g[0].bench as $l |
  if ($l | startswith("fanout")) or ($l | startswith("window")) or ($l | startswith("latency")) or ($l | startswith("publish")) then
    "\($l): deliveries/s \([$g[].deliveries_per_sec] | median), p50 \([$g[].latency.p50_ms] | median) ms, p99 \([$g[].latency.p99_ms] | median) ms, p99.9 \([$g[].latency.p999_ms] | median) ms, publish rate \([$g[].publish_rate] | median)/s, publish p50 \([$g[].publish_latency.p50_ms] | median) ms, lost \([$g[].lost] | add), duplicated \([$g[].duplicated] | add), disconnected \([$g[].disconnected_subscribers] | add), machine busy \([$g[].cpu.machine_busy_pct] | median)%"
  elif ($l | startswith("durable")) then
    "\($l): acked/s \([$g[].acked_per_sec] | median), ack p50 \([$g[].ack_latency.p50_ms] | median) ms, p99 \([$g[].ack_latency.p99_ms] | median) ms, runs \([$g[].acked_per_sec] | tostring), nacked \([$g[].nacked] | add), timeouts \([$g[].ack_timeouts] | add), all ok \([$g[].ok] | all), gateway cores \([$g[] | .cpu.server_cores[.server_pid]] | median), machine busy \([$g[].cpu.machine_busy_pct] | median)%"
  elif ($l | startswith("resume")) then
    "\($l): replayed events/s (all sockets) \([$g[].replayed_events_per_sec] | median), per socket median \([$g[].per_socket_events_per_sec_median] | median), runs \([$g[].replayed_events_per_sec] | tostring), replay s \([$g[].replay_secs] | median), first event p50 \([$g[].first_event_after.p50_ms] | median) ms, complete sockets \([$g[].complete_sockets] | min) of \($g[0].sockets), all ok \([$g[].ok] | all), preload acked/s \([$g[].preload_acked_per_sec] | median), machine busy \([$g[].cpu.machine_busy_pct] | median)%"
  elif ($l | startswith("jetstream")) then
    "\($l): " + ([$g[] | to_entries[] | select(.value | type == "object")] | group_by(.key) | map("\(.[0].key) median \([.[].value.runs[]] | median) runs \([.[].value.runs[]] | tostring)") | join("; "))
  elif ($l | startswith("connections")) then
    "\($l): server bytes/connection \([$g[].server_bytes_per_connection] | median), connects/s \([$g[].connects_per_sec] | median), opened \([$g[].opened] | min), failures \([$g[].failures] | add), loadgen bytes/connection \([$g[].loadgen_bytes_per_connection] | median)"
  else
    "\($l): \($g | map(del(.bench)) | tostring)"
  end' "$results" | tee "$out/summary.txt"
# Durable publishes as a ratio of a JetStream ceiling measured in the same
# round (interleaved, so that a slow spell of the machine lowers both).
# ratio_to CEILING_LABEL DESCRIPTION
ratio_to() {
  jq -s -r --arg ceiling "$1" --arg what "$2" "$jq_median"'
    (map(select(.bench == $ceiling and .round != null)) | map({key: (.round | tostring), value: .herald_pipelined.median_msgs_per_sec}) | from_entries) as $ceil |
    map(select((.bench | startswith("durable")) and .round != null and $ceil[.round | tostring] != null))
    | group_by(.bench)[]
    | [.[] | (.acked_per_sec / $ceil[.round | tostring] * 1000 | round / 1000)] as $r
    | "\(.[0].bench): ratio to the same round'"'"'s \($what) \($r | median), rounds \($r | tostring)"' "$results" | tee -a "$out/summary.txt"
}
ratio_to jetstream ceiling
# The same against the ceiling with Herald's message size and topology.
ratio_to jetstream-matched "matched ceiling (480 B, 128 subjects, live subscriber)"
