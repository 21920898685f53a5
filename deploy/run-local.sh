#!/usr/bin/env bash
# `make run`: check the infrastructure, create and migrate the database, then run the three
# services in the foreground; Ctrl-C (or any service exiting) stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

# Development defaults; set your own in the environment (see README, "Configuration").
export SEGMENTS_SECRET_KEY="${SEGMENTS_SECRET_KEY:-dev-only-secret-change-me}"
export SEGMENTS_BOOTSTRAP_API_KEY="${SEGMENTS_BOOTSTRAP_API_KEY:-sk_dev_admin_key}"
# Only this machine reaches the services (containers listen on every interface).
export SEGMENTS_BIND_HOST="${SEGMENTS_BIND_HOST:-127.0.0.1}"
# Destinations may point at the vendor fakes on this machine (docs/sync.md, "Trying it locally
# with the fakes"); anywhere else private stays refused.
export SEGMENTS_ALLOW_PRIVATE_DESTINATIONS="${SEGMENTS_ALLOW_PRIVATE_DESTINATIONS:-127.0.0.1}"
# A frontend's dev server may call the API from the browser: the usual local origins (React and
# Next.js 3000, Vite 5173, Angular 4200, Vue CLI and others 8080), by name and by address.
export SEGMENTS_CORS_ORIGINS="${SEGMENTS_CORS_ORIGINS:-http://localhost:3000,http://127.0.0.1:3000,http://localhost:5173,http://127.0.0.1:5173,http://localhost:4200,http://127.0.0.1:4200,http://localhost:8080,http://127.0.0.1:8080}"

"$bin/python" -m segments_shared.cli.preflight || exit 1
"$bin/segments-db" upgrade

pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

"$bin/segment-api" & pids+=($!)
"$bin/sync-worker" & pids+=($!)
"$bin/metrics-worker" & pids+=($!)

echo "segment-api on http://localhost:${SEGMENTS_API_PORT:-8000} (docs at /docs)," \
  "admin key: $SEGMENTS_BOOTSTRAP_API_KEY; Ctrl-C stops all three." >&2
# Whichever service exits first (or Ctrl-C) stops the others.
wait -n "${pids[@]}" || true
