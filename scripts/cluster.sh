#!/usr/bin/env bash
# A local cluster-mode demo: one redis-server, three verve instances sharing it, and nginx in
# front of them, all on free loopback ports, everything (logs, config, Redis' directory) in
# one temporary directory. Prints where to send requests, then waits; Ctrl-C stops it all.
#
#   scripts/cluster.sh                   # 60 s windows, nginx on a free port
#   INTERVAL=5 PORT=8080 scripts/cluster.sh
#
# Environment: INTERVAL (60: verve's --interval), PORT (nginx's port; default a free one),
# VERVE_BIN (default target/release/verve, built with `cargo build --release` if missing),
# KEEP (1: keep the temporary directory and its logs at the end; 0: remove it).
#
# One count line per window is written across the three logs, by whichever instance leads
# that window. On Ctrl-C (or SIGTERM) nginx stops first, then the three instances get SIGTERM
# together (each ships the rest of its open window to Redis; the last one to leave reports
# it), then Redis. The children run in sessions of their own (setsid), so that a Ctrl-C in
# the terminal reaches only this script, which stops them in that order; Redis must outlive
# the instances' last shipments.
#
# Started with `&` from another script, a bash script ignores SIGINT (POSIX); stop it with
# SIGTERM then, or start it from a shell with job control (`set -m`).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

INTERVAL=${INTERVAL:-60}
KEEP=${KEEP:-1}
[[ $INTERVAL =~ ^[1-9][0-9]*$ ]] || die "INTERVAL must be a positive integer, not '$INTERVAL'"
need redis-server "apt-get install -y redis-server"
need nginx "apt-get install -y nginx-light"
need setsid "apt-get install -y util-linux"

TMP=$(mktemp -d -t verve-cluster.XXXXXX)
NGINX_PID=
VERVE_PIDS=()
STOPPED=

# Stops everything this script started, nginx first and Redis last (see above). Runs once.
cleanup() {
  local rc=$? pid i
  [[ -z $STOPPED ]] || return 0
  STOPPED=1
  trap '' INT TERM
  echo >&2
  if [[ -n $NGINX_PID ]]; then
    echo "stopping nginx ..." >&2
    stop_pid "$NGINX_PID"
  fi
  if ((${#VERVE_PIDS[@]})); then
    echo "stopping the verve instances (SIGTERM: each ships the rest of its window) ..." >&2
    for pid in "${VERVE_PIDS[@]}"; do
      kill -TERM "$pid" 2>/dev/null || true
    done
    for i in "${!VERVE_PIDS[@]}"; do
      stop_pid "${VERVE_PIDS[$i]}"
      echo "  verve-$((i + 1)) exit status: $STOP_RC" >&2
    done
  fi
  if [[ -n $REDIS_PID ]]; then
    echo "stopping redis-server ..." >&2
    stop_pid "$REDIS_PID"
  fi
  if [[ $KEEP == 1 ]]; then
    echo "logs kept in $TMP" >&2
    if compgen -G "$TMP/verve-*.log" >/dev/null; then
      echo "count lines:" >&2
      grep -h 'unique_count=' "$TMP"/verve-*.log | sort >&2 || true
    fi
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Release build of verve.
if [[ -n ${VERVE_BIN:-} ]]; then
  BIN=$VERVE_BIN
else
  BIN=$(target_dir)/release/verve
  [[ -x $BIN ]] || build --bin verve
fi
[[ -x $BIN ]] || die "$BIN not found"

# Redis: no persistence, loopback only, its directory and log in $TMP.
start_redis --setsid "$TMP"

# Three verve instances.
VERVE_PORTS=()
for i in 1 2 3; do
  port=$(free_port)
  logf=$TMP/verve-$i.log
  setsid "$BIN" --listen "127.0.0.1:$port" --log-file "$logf" --interval "$INTERVAL" \
    --redis "$REDIS_URL" --instance-id "verve-$i" >"$logf.out" 2>&1 &
  VERVE_PIDS+=("$!")
  VERVE_PORTS+=("$port")
  wait_port "$port" "$!" || {
    cat "$logf.out" >&2
    die "verve-$i did not start on port $port"
  }
done

# nginx: generated config, run in the foreground of its own session as the current user.
PORT=${PORT:-$(free_port)}
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a port number, not '$PORT'"
mkdir -p "$TMP/nginx"
{
  # As root, nginx's workers would switch to nobody, who cannot enter $TMP (mode 0700).
  if ((EUID == 0)); then
    echo "user $(id -un) $(id -gn);"
  fi
  cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx-error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log $TMP/nginx-access.log;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream verve {
$(for p in "${VERVE_PORTS[@]}"; do echo "        server 127.0.0.1:$p;"; done)
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$PORT;
        location / {
            proxy_pass http://verve;
            # Keep-alive to the instances.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # verve answers 503 while it shuts down: ids are deduplicated, so another
            # instance may safely take the request again.
            proxy_next_upstream error timeout http_503;
        }
    }
}
EOF
} >"$TMP/nginx.conf"
nginx -t -q -p "$TMP/nginx" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" ||
  die "nginx refused the generated $TMP/nginx.conf"
setsid nginx -p "$TMP/nginx" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
  >"$TMP/nginx.out" 2>&1 &
NGINX_PID=$!
wait_port "$PORT" "$NGINX_PID" || {
  cat "$TMP/nginx.out" "$TMP/nginx-error.log" >&2 2>/dev/null || true
  die "nginx did not start on port $PORT"
}

cat <<EOF

verve cluster: 3 instances, ${INTERVAL} s windows, Redis $REDIS_URL (no persistence)

send requests to nginx:  http://127.0.0.1:$PORT
    curl 'http://127.0.0.1:$PORT/api/verve/accept?id=42'
    for i in \$(seq 1 100); do curl -s "http://127.0.0.1:$PORT/api/verve/accept?id=\$i"; echo; done

instances (each also serves /healthz and /metrics):
EOF
for i in 1 2 3; do
  echo "    verve-$i  http://127.0.0.1:${VERVE_PORTS[$((i - 1))]}  pid ${VERVE_PIDS[$((i - 1))]}  log $TMP/verve-$i.log"
done
cat <<EOF

logs: $TMP
    count lines (one per window, from the instance that led it):
        tail -F $TMP/verve-*.log | grep --line-buffered unique_count=
    nginx: $TMP/nginx-access.log, $TMP/nginx-error.log;  redis: $TMP/redis.log
    redis-cli -p $REDIS_PORT --scan --pattern 'verve:*'

Ctrl-C stops everything.
EOF

# Until a signal, or until one of them dies on its own (then the EXIT trap stops the rest).
rc=0
wait -n "$REDIS_PID" "$NGINX_PID" "${VERVE_PIDS[@]}" || rc=$?
for pid in "$REDIS_PID" "$NGINX_PID" "${VERVE_PIDS[@]}"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$SCRIPT_NAME: process $pid exited on its own (status $rc); stopping the rest" >&2
    exit 1
  fi
done
