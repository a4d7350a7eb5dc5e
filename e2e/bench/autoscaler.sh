#!/usr/bin/env bash
# Autoscaler benchmarks: tick cost of the one-pipeline signal read for 1, 100, 1,000 and 10,000
# events against one PING round trip measured in the same run (ratios printed, nothing asserted).
#
# Needs REDIS_URL (eval "$(e2e/stack env)"). TIKETI_BENCH_PROFILE=dev skips the release build
# (figures then include debug-build client overhead). Single-node Redis only (cluster mode is
# covered for correctness by operator/tests/signals_redis.rs, not benchmarked).
#
# Pending (need the autoscaler loop wired into `tiketi-operator run`): reaction latency from the
# ZADD that crosses a step to the Deployment's spec.replicas changing (p50/p99 over >= 20 trials,
# as a multiple of pollInterval), and operator resident memory with 1,000 events.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ -z "${REDIS_URL:-}" ]]; then
    echo "autoscaler.sh: REDIS_URL is not set; run: eval \"\$(e2e/stack env)\"" >&2
    exit 2
fi

profile=(--profile "${TIKETI_BENCH_PROFILE:-bench}")
echo "== autoscaler: signal tick cost (profile ${TIKETI_BENCH_PROFILE:-bench}) =="
cargo bench -q -p tiketi-operator --bench autoscaler_tick "${profile[@]}"
