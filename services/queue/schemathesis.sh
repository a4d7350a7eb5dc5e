#!/usr/bin/env bash
# Schemathesis (from PyPI) against the queue's /openapi.json: no 5xx, no response that breaks the
# schema (status codes, content types, bodies, headers), auth enforced. Self-contained: installs
# schemathesis into a cached venv, starts a private redis-server and the debug binary with one
# event, runs `st run --checks all`, stops what it started. Exit code is schemathesis'.
# Meant for e2e/checks (the lead wires it); needs python3, redis-server, cargo.
set -uo pipefail
cd "$(dirname "$0")/../.."

version=4.32.5
venv=${XDG_CACHE_HOME:-$HOME/.cache}/tiketi/schemathesis-$version
if [[ ! -x "$venv/bin/st" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version" || exit 1
fi

cargo build -q -p tiketi-queue || exit 1
bin=target/debug/tiketi-queue
work=$(mktemp -d /tmp/tiketi-queue-st.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
qport=$(free_port)
cat > "$work/event.json" <<JSON
{"eventId":"st-event","onSaleAt":"2020-01-01T00:00:00Z","queue":{"ratePerSecond":5,"maxActive":50,"tokenTtlSeconds":600,"heartbeatTimeoutSeconds":600}}
JSON
TIKETI_LISTEN="127.0.0.1:$qport" TIKETI_REDIS_URL="redis://127.0.0.1:$rport" TIKETI_JWT_SECRET=st-user-secret-for-schemathesis-only-0001 \
TIKETI_ADMISSION_SECRET=st-admission-secret-for-schemathesis-01 TIKETI_EVENT_CONFIG="$work/event.json" TIKETI_RATE_LIMIT_USER=100000 \
TIKETI_RATE_LIMIT_IP=100000 TIKETI_DRAIN_DELAY=0s RUST_LOG=warn "$bin" 2> "$work/queue.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$qport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

token=$("$bin" gen-tokens --secret st-user-secret-for-schemathesis-only-0001 --count 1 --prefix st-user-)
cat > "$work/st-fixed.toml" <<TOML
[parameters]
"path.event" = "st-event"
TOML
cd "$work"  # schemathesis keeps a .schemathesis/ cache in its working directory
# The stream never ends by design (until admission); it is covered by the SSE integration tests.
"$venv/bin/st" --config-file "$work/st-fixed.toml" run "http://127.0.0.1:$qport/openapi.json" \
  -H "Authorization: Bearer $token" --checks all \
  --exclude-path '/v1/events/{event}/queue/me/stream' \
  --max-examples "${TIKETI_ST_EXAMPLES:-50}" --request-timeout 5 --seed 1 \
  --phases examples,coverage,fuzzing,stateful
st_fixed=$?
# And once more with free-form event ids (unknown events, odd bytes in the path).
"$venv/bin/st" run "http://127.0.0.1:$qport/openapi.json" \
  -H "Authorization: Bearer $token" --checks all \
  --exclude-path '/v1/events/{event}/queue/me/stream' \
  --max-examples "${TIKETI_ST_EXAMPLES:-50}" --request-timeout 5 --seed 2
st_free=$?
exit $(( st_fixed || st_free ))
