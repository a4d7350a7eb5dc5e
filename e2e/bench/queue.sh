#!/usr/bin/env bash
# Queue benchmark: joins per second and p50/p99 latency with wrk (every request a distinct user
# JWT), next to two baselines measured in the same run on the same machine:
#   - redis-benchmark ZADD throughput against the same private Redis;
#   - the same axum stack with a join route that does nothing (`tiketi-queue bench-empty`).
# Then: how many SSE streams one process holds, its resident memory, and Redis commands/s while
# they are open (the ticker's bounded cost). Prints ratios; asserts nothing.
#
# Self-contained: starts a private redis-server on a free port (so the numbers do not depend on
# what else the shared stack is doing) and stops everything it started.
# Knobs: TIKETI_BENCH_SECONDS (10), TIKETI_BENCH_CONNECTIONS (64), TIKETI_BENCH_STREAMS (10000),
# TIKETI_BENCH_PROFILE=dev to skip the release build.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${TIKETI_BENCH_SECONDS:-10}
conns=${TIKETI_BENCH_CONNECTIONS:-64}
nstreams=${TIKETI_BENCH_STREAMS:-10000}
threads=2

for tool in wrk redis-server redis-benchmark redis-cli; do
  command -v "$tool" >/dev/null || { echo "queue.sh: $tool is required" >&2; exit 2; }
done

if [[ "${TIKETI_BENCH_PROFILE:-release}" == dev ]]; then
  cargo build -q -p tiketi-queue
  bin=${CARGO_TARGET_DIR:-target}/debug/tiketi-queue
else
  cargo build -q --release -p tiketi-queue
  bin=${CARGO_TARGET_DIR:-target}/release/tiketi-queue
fi

work=$(mktemp -d /tmp/tiketi-queue-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
# Extracts Requests/sec, p50 and p99 (ms) and non-2xx count from `wrk --latency` output.
wrk_rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
wrk_pct() { awk -v p="$2" '$1 == p {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' "$1"; }
wrk_errors() { awk '/Non-2xx/ {n=$5} /Socket errors/ {s=$0} END {printf "%d%s", n, (s ? " (" s ")" : "")}' "$1"; }

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_url="redis://127.0.0.1:$rport"

echo "== queue benchmark: ${secs}s per run, $conns connections, $threads wrk threads, $(nproc) cores =="

# --- baseline 1: redis-benchmark ZADD (single commands, no pipelining, like a join's one round trip)
zadd=$(redis-benchmark -p "$rport" -t zadd -n 300000 -c 50 -q 2>/dev/null | tr '\r' '\n' | awk '/ZADD/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}')
redis-cli -p "$rport" flushall >/dev/null

# --- tokens: one distinct user per request
ntok=$(( secs * 40000 ))
"$bin" gen-tokens --secret bench-user-secret-for-the-queue-bench-001 --count "$ntok" --prefix bench-user- > "$work/tokens.txt"
cat > "$work/join.lua" <<'LUA'
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  local n = tonumber(args[1])
  tokens = {}
  local i = 0
  for line in io.lines(args[2]) do
    if i % n == tid then tokens[#tokens + 1] = line end
    i = i + 1
  end
  idx = 0
end
function request()
  idx = idx + 1
  local t = tokens[(idx - 1) % #tokens + 1]
  return wrk.format("POST", wrk.path, { ["Authorization"] = "Bearer " .. t }, "")
end
LUA

# --- baseline 2: the empty axum endpoint
eport=$(free_port)
"$bin" bench-empty --listen "127.0.0.1:$eport" &
pids+=($!)
wait_http "http://127.0.0.1:$eport/healthz"
wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$work/join.lua" "http://127.0.0.1:$eport/v1/events/bench/queue" -- "$threads" "$work/tokens.txt" > "$work/empty.txt"
kill "${pids[-1]}"; unset 'pids[-1]'

# --- the real join
qport=$(free_port)
cat > "$work/event.json" <<JSON
{"eventId":"bench","onSaleAt":"2020-01-01T00:00:00Z","queue":{"ratePerSecond":50,"maxActive":2000,"tokenTtlSeconds":600,"heartbeatTimeoutSeconds":600}}
JSON
TIKETI_LISTEN="127.0.0.1:$qport" TIKETI_REDIS_URL="$redis_url" TIKETI_JWT_SECRET=bench-user-secret-for-the-queue-bench-001 \
TIKETI_ADMISSION_SECRET=bench-admission-secret-for-the-bench-01 TIKETI_EVENT_CONFIG="$work/event.json" \
TIKETI_RATE_LIMIT_IP=10000000 TIKETI_ADMISSION=false TIKETI_DRAIN_DELAY=0s \
TIKETI_MAX_STREAMS=100000 RUST_LOG=warn "$bin" 2> "$work/queue.log" &
qpid=$!
pids+=($qpid)
wait_http "http://127.0.0.1:$qport/readyz"
wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$work/join.lua" "http://127.0.0.1:$qport/v1/events/bench/queue" -- "$threads" "$work/tokens.txt" > "$work/join.txt"
depth=$(redis-cli -p "$rport" zcard 'tiketi:{bench}:queue')

# --- the same join on a private three-primary Redis Cluster (explicit bus ports), same tokens
cluster_addrs=()
for i in 1 2 3; do
  cp_=$(free_port); cb_=$(free_port)
  mkdir -p "$work/cluster-$i"
  redis-server --port "$cp_" --cluster-port "$cb_" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save '' --appendonly no \
    --dir "$work/cluster-$i" --logfile "$work/cluster-$i/redis.log" &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$cp_" ping >/dev/null 2>&1 && break; sleep 0.1; done
  cluster_addrs+=("127.0.0.1:$cp_")
done
redis-cli --cluster create "${cluster_addrs[@]}" --cluster-replicas 0 --cluster-yes > "$work/cluster-create.log" 2>&1
for _ in $(seq 100); do
  ok=1
  for a in "${cluster_addrs[@]}"; do
    redis-cli -p "${a##*:}" cluster info | grep -q cluster_state:ok || ok=0
  done
  [[ $ok == 1 ]] && break; sleep 0.1
done
cqport=$(free_port)
TIKETI_LISTEN="127.0.0.1:$cqport" TIKETI_REDIS_URL="redis://${cluster_addrs[0]}" TIKETI_REDIS_CLUSTER=true \
TIKETI_JWT_SECRET=bench-user-secret-for-the-queue-bench-001 \
TIKETI_ADMISSION_SECRET=bench-admission-secret-for-the-bench-01 TIKETI_EVENT_CONFIG="$work/event.json" \
TIKETI_RATE_LIMIT_IP=10000000 TIKETI_ADMISSION=false TIKETI_DRAIN_DELAY=0s \
RUST_LOG=warn "$bin" 2> "$work/queue-cluster.log" &
pids+=($!)
wait_http "http://127.0.0.1:$cqport/readyz"
wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$work/join.lua" "http://127.0.0.1:$cqport/v1/events/bench/queue" -- "$threads" "$work/tokens.txt" > "$work/join-cluster.txt"
kill "${pids[-1]}"; unset 'pids[-1]'

empty_rps=$(wrk_rps "$work/empty.txt"); join_rps=$(wrk_rps "$work/join.txt")
cjoin_rps=$(wrk_rps "$work/join-cluster.txt")
printf '\n%-34s %12s %10s %10s\n' "" "req/s" "p50 ms" "p99 ms"
printf '%-34s %12.0f %10s %10s\n' "redis-benchmark ZADD (-c 50)" "$zadd" "-" "-"
printf '%-34s %12.0f %10.3f %10.3f\n' "axum empty endpoint (ceiling)" "$empty_rps" "$(wrk_pct "$work/empty.txt" 50%)" "$(wrk_pct "$work/empty.txt" 99%)"
printf '%-34s %12.0f %10.3f %10.3f\n' "POST …/queue (join)" "$join_rps" "$(wrk_pct "$work/join.txt" 50%)" "$(wrk_pct "$work/join.txt" 99%)"
printf '%-34s %12.0f %10.3f %10.3f\n' "POST …/queue (join), 3-shard cluster" "$cjoin_rps" "$(wrk_pct "$work/join-cluster.txt" 50%)" "$(wrk_pct "$work/join-cluster.txt" 99%)"
echo
echo "join non-2xx responses:   $(wrk_errors "$work/join.txt")"
echo "users in the queue:       $depth (every request a distinct user until the tokens run out)"
echo "cluster join non-2xx:     $(wrk_errors "$work/join-cluster.txt")"
awk -v j="$join_rps" -v e="$empty_rps" -v z="$zadd" -v c="$cjoin_rps" 'BEGIN {
  printf "joins/s / empty ceiling:  %.2f\n", j / e
  printf "joins/s / redis ZADD/s:   %.2f\n", j / z
  printf "cluster joins/s / single: %.2f (one event: its keys share one slot, one shard)\n", c / j
  printf "target >= 10000 joins/s:  %s\n", (j >= 10000 ? "met" : "NOT met")
  printf "target >= 0.5 of ceiling: %s\n", (j / e >= 0.5 ? "met" : "NOT met")
}'

# --- streams: how many one process holds, its memory, and Redis load meanwhile
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
rss_before=$(rss_kb "$qpid")
cmds() { redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }
"$bin" bench-streams --addr "127.0.0.1:$qport" --event bench --tokens "$work/tokens.txt" \
  --count "$nstreams" --hold 20s > "$work/streams.json" &
spid=$!
pids+=($spid)
# The client prints its summary once every stream has its first event, then holds them.
for _ in $(seq 1200); do [[ -s "$work/streams.json" ]] && break; sleep 0.1; done
# Past the first 5 s every stream's fix is due for its bounded re-read: sample the steady state.
sleep 6
c0=$(cmds); sleep 5; c1=$(cmds)
streams_open=$(curl -fs "http://127.0.0.1:$qport/metrics" | awk '/^tiketi_queue_sse_streams / {print $2}')
rss_after=$(rss_kb "$qpid")
wait "$spid" || true
echo
echo "SSE streams held by one process: ${streams_open:-0} (client: $(cat "$work/streams.json"))"
awk -v a="$rss_after" -v b="$rss_before" -v n="${streams_open:-0}" -v c0="$c0" -v c1="$c1" 'BEGIN {
  printf "process RSS: %.1f MiB before, %.1f MiB with the streams (%.1f KiB per stream)\n", b/1024, a/1024, (n > 0 ? (a-b)/n : 0)
  printf "Redis commands/s while they are open: %.0f (%.3f per stream per second)\n", (c1-c0)/5, (n > 0 ? (c1-c0)/5/n : 0)
}'
