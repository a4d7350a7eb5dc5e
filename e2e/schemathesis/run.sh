#!/usr/bin/env bash
# Schemathesis against the reservation service's /openapi.json: no 5xx, and every response
# conforms to the documented status codes, content types, headers and schemas.
# Schemathesis is installed once into a cached venv outside the repo (~/.cache/tiketi).
# Needs the stack env (REDIS_URL, DATABASE_URL with CREATEDB). Knob: SCHEMATHESIS_MAX_EXAMPLES (60).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${REDIS_URL:?run eval \"\$(e2e/stack env)\" first}"
: "${DATABASE_URL:?run eval \"\$(e2e/stack env)\" first}"
VENV=${TIKETI_CACHE:-$HOME/.cache/tiketi}/venv-schemathesis
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'schemathesis>=4.32,<5'
fi

cargo build -q -p tiketi-reservation --bin tiketi-reservation --example tokens
BIN=target/debug/tiketi-reservation
work=$(mktemp -d /tmp/tiketi-schemathesis.XXXXXX)
suffix=$(date +%s)_$$
db="tiketi_schemathesis_$suffix"
event="st-${suffix//_/-}"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
  redis-cli -u "$REDIS_URL" --scan --pattern "tiketi:{$event}:*" 2>/dev/null | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
base="${DATABASE_URL%%\?*}"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db"
cat > "$work/event.json" <<JSON
{"eventId": "$event", "onSaleAt": "2026-01-01T00:00:00Z",
 "reservation": {"holdTtlSeconds": 60, "maxSeatsPerUser": 4},
 "inventory": {"sections": [{"name": "A", "rows": 10, "seatsPerRow": 10}]}}
JSON
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export TIKETI_JWT_SECRET=st-user-secret-for-schemathesis-only-0001 TIKETI_ADMISSION_SECRET=st-admission-secret-for-schemathesis-01
TIKETI_LISTEN="127.0.0.1:$port" TIKETI_REDIS_URL="$REDIS_URL" TIKETI_EVENT_CONFIG="$work/event.json" \
  TIKETI_DATABASE_URL="${base%/*}/$db" TIKETI_DRAIN_DELAY=0s RUST_LOG=warn "$BIN" > "$work/service.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "service did not become ready"; cat "$work/service.log"; exit 1; }
eval "$(target/debug/examples/tokens "$event" st-user)"

status=0
export ST_EVENT="$event"
"$VENV/bin/schemathesis" --config-file e2e/schemathesis/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-60}" \
  --workers 2 \
  --request-timeout 10 \
  -H "Authorization: Bearer $USER_TOKEN" \
  -H "X-Admission-Token: $ADMISSION_TOKEN" || status=$?
if grep -q '"level":"ERROR"' "$work/service.log"; then
  echo "service logged errors:"; grep '"level":"ERROR"' "$work/service.log" | head -20; status=1
fi
exit $status
