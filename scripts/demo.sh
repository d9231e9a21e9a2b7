#!/usr/bin/env bash
# A local demo: starts verve with 5 s windows and a callback receiver (python's http.server),
# sends a few ids with an endpoint, and shows the count and endpoint lines as they are
# written. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8080}
hook=${HOOK_PORT:-8099}
dir=$(mktemp -d)
cargo build --release --quiet
python3 -m http.server "$hook" --bind 127.0.0.1 --directory "$dir" >"$dir/receiver.log" 2>&1 &
receiver=$!
# The receiver is on loopback, which verve calls only when an address entry allows it.
./target/release/verve --listen "127.0.0.1:$port" --interval 5 --log-file "$dir/verve.log" \
  --endpoint-allow 127.0.0.1 &
verve=$!
trap 'kill $verve $receiver 2>/dev/null; wait 2>/dev/null; echo; echo "logs kept in $dir"' EXIT
for _ in $(seq 50); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
endpoint="http%3A%2F%2F127.0.0.1%3A$hook%2Fhook"
for id in 1 2 3 3 -7 9223372036854775807; do
  printf 'id=%s -> %s\n' "$id" "$(curl -s "http://127.0.0.1:$port/api/verve/accept?id=$id&endpoint=$endpoint")"
done
echo "count log: $dir/verve.log (6 requests, 5 distinct ids); Ctrl-C to stop"
tail -f "$dir/verve.log"
