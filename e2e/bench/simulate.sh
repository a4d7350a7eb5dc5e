#!/usr/bin/env bash
# Autoscaler v2 against KEDA + HPA, in the simulator (ratios in the same run, nothing asserted):
# the shipped example event exactly as it is, over every trace under e2e/traces/, rows tiketi,
# KEDA + HPA, KEDA + HPA + cron pre-warm and static peak, per component and in total, and the
# bar (under-capacity ≤ 0.2× the better KEDA row, replica-minutes ≤ 1.0× the cron row).
#   TIKETI_SIMULATE_OUT=docs   also write the SVG timelines there (docs/simulate-<trace>.svg), and
#                              a PNG of each next to it when rsvg-convert is installed
#                              (Debian: librsvg2-bin; the PNGs are what the README shows)
#   TIKETI_SIMULATE_FORMAT=json|markdown|text (default text)
set -euo pipefail
cd "$(dirname "$0")/../.."
traces=$(ls e2e/traces/*.csv | paste -sd, -)
args=(simulate --event manifests/examples/iu-2026-seoul.yaml --trace "$traces")
case "${TIKETI_SIMULATE_FORMAT:-text}" in
  json) args+=(--json) ;;
  markdown) args+=(--markdown) ;;
esac
if [[ -n "${TIKETI_SIMULATE_OUT:-}" ]]; then
  args+=(--out-svg "${TIKETI_SIMULATE_OUT}/simulate-{trace}.svg")
fi
echo "== autoscaler: simulator, example event over $(ls e2e/traces/*.csv | wc -l) traces =="
cargo run -q --release -p tiketi-operator --locked -- "${args[@]}"
if [[ -n "${TIKETI_SIMULATE_OUT:-}" ]]; then
  if command -v rsvg-convert >/dev/null; then
    for svg in "${TIKETI_SIMULATE_OUT}"/simulate-*.svg; do
      rsvg-convert -w 1200 -b white "$svg" -o "${svg%.svg}.png"
    done
    echo "PNG timelines written next to the SVGs"
  else
    echo "rsvg-convert not found (apt-get install librsvg2-bin): SVG timelines only" >&2
  fi
fi
