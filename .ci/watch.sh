#!/usr/bin/env bash
# A smoke test of `demo.ts watch` as a person starts it, on one runtime: the
# page is served, a scenario's calls go through the network and are reported
# to the page, and SIGTERM (what Ctrl+C does, SIGINT, is ignored by jobs a
# script starts in the background) closes everything.
#     bash .ci/watch.sh node_modules/.bin/tsx demo.ts    # or: .ci/node_modules/.bin/deno run -P demo.ts, ...
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp)"
trap 'rm -f "$out"; kill "$pid" 2>/dev/null || true' EXIT
port=$((20000 + RANDOM % 10000))
web=$((port + 1))
"$@" watch --port "$port" --web "$web" > "$out" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "Ctrl+C stops" "$out" && break; sleep 0.1; done
grep -q "Ctrl+C stops" "$out" || { cat "$out"; echo "FAILED: watch did not start"; exit 1; }
curl -sf "http://127.0.0.1:$web/" | grep -q "<svg" || { echo "FAILED: no page"; exit 1; }
events="$(mktemp)"
curl -sN --max-time 4 "http://127.0.0.1:$web/events" > "$events" &
sleep 0.3
curl -sf -X POST -d '{"name":"lab"}' "http://127.0.0.1:$web/scenario" > /dev/null
for _ in $(seq 40); do grep -q '"kind":"note"' "$events" && break; sleep 0.1; done
grep -q '"label":"add(10, 20)"' "$events" && grep -q 'lab: add(10, 20) -> 30' "$events" ||
  { cat "$events"; echo "FAILED: the scenario's calls were not reported"; exit 1; }
rm -f "$events"
kill -TERM "$pid"
wait "$pid" || true # npx reports a signal it passed on as 128 + its number, whatever the demo did
for _ in $(seq 50); do grep -q "^Closed.$" "$out" && break; sleep 0.1; done
grep -q "^Closed.$" "$out" || { cat "$out"; echo "FAILED: not closed"; exit 1; }
echo "watch on $1: page served, the lab's calls drawn through the network, closed on SIGTERM"
