#!/usr/bin/env bash
# Autoscaler benchmarks (ratios printed, nothing asserted):
#   1. tick cost of the one-pipeline signal read for 1, 100, 1,000 and 10,000 events against one
#      PING round trip measured in the same run;
#   1b. the whole autoscaler tick (operator's own loop: cache, signal read, decisions, book,
#      metrics, status throttle) at 1,000 and 10,000 settled events against the 2 s poll, next
#      to the signal read alone in the same run (real Redis; the API is a counting stand-in);
#   2. reaction latency from the ZADD that crosses a step to the Deployment's spec.replicas
#      changing (p50/p99 over >= 20 trials, as a multiple of pollInterval; baseline: one
#      spec.replicas write straight to the API server);
#   3. operator resident memory with 500 and 1,000 TicketingEvents against the same binary idle,
#      the per-event slope, and, once all are Ready, the tick, the operator's CPU and its API calls
#      and writes (by resource) over 20 s with nothing to change;
#   4. convergence: 200 TicketingEvents created at once until all Ready, next to the stack's own
#      cost in the same run (2 bare Deployments per event, the operator's pod template, created at
#      once until ready).
#
# Needs the stack (eval "$(e2e/stack env)": REDIS_URL, KUBECONFIG). TIKETI_BENCH_PROFILE=dev skips
# the release build (figures then include debug-build overhead). TIKETI_BENCH_EVENTS (default 1000
# for part 3, 200 for part 4) and TIKETI_BENCH_TRIALS (default 25) size parts 3, 4 and 2;
# TIKETI_BENCH_ONLY=reaction|memory|convergence runs one of them. Part 1 runs again against the
# stack's three-primary cluster (REDIS_CLUSTER_URL):
# one pipeline per slot group instead of one in all.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ -z "${REDIS_URL:-}" ]]; then
    echo "autoscaler.sh: REDIS_URL is not set; run: eval \"\$(e2e/stack env)\"" >&2
    exit 2
fi

profile=(--profile "${TIKETI_BENCH_PROFILE:-bench}")
echo "== autoscaler: signal tick cost (profile ${TIKETI_BENCH_PROFILE:-bench}) =="
cargo bench -q -p tiketi-operator --bench autoscaler_tick "${profile[@]}"
echo "== autoscaler: the whole tick with nothing to change =="
cargo bench -q -p tiketi-operator --bench loop_tick "${profile[@]}"
if [[ -n "${REDIS_CLUSTER_URL:-}" ]]; then
  echo "== autoscaler: signal tick cost on the three-primary cluster =="
  TIKETI_BENCH_CLUSTER=1 REDIS_URL="$REDIS_CLUSTER_URL" \
    cargo bench -q -p tiketi-operator --bench autoscaler_tick "${profile[@]}"
fi

if [[ -z "${KUBECONFIG:-}" ]]; then
    echo "autoscaler.sh: KUBECONFIG is not set; skipping the loop benchmarks" >&2
    exit 2
fi
echo "== autoscaler: the loop in the operator binary (reaction latency, memory, convergence) =="
cargo bench -q -p tiketi-operator --bench autoscaler_loop "${profile[@]}"
