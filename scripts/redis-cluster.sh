#!/usr/bin/env bash
# A 3-master Redis Cluster on loopback, for perf runs and by hand: three redis-server
# --cluster-enabled yes on PORT, PORT+1 and PORT+2 (their cluster buses on the same + 10000),
# without persistence, each with its config, log and pid file in DIR, joined with
# `redis-cli --cluster create` (equal slot ranges, no replicas), as tests/common/redis_servers.rs
# does for the tests.
#
#   scripts/redis-cluster.sh start DIR PORT   # prints verve's --redis (the three URLs) on stdout
#   scripts/redis-cluster.sh stop DIR PORT    # stops the three nodes started in DIR
#
# start fails (exit 1) if a port is taken or the cluster is not ok within 20 s; the nodes it
# started are then stopped. The nodes run as daemons: stop them with `stop`.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# == 3)) || die "usage: $SCRIPT_NAME start|stop DIR PORT"
ACTION=$1
DIR=$2
PORT=$3
if ! [[ $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 55533)); then
  die "PORT must be a port number up to 55533, not '$PORT'"
fi
PORTS=("$PORT" $((PORT + 1)) $((PORT + 2)))
need redis-server "apt-get install -y redis-server"
need redis-cli "apt-get install -y redis-tools"

# port_open P: something accepts connections on 127.0.0.1:P.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_nodes() {
  local p pid
  for p in "${PORTS[@]}"; do
    [[ -f $DIR/node-$p.pid ]] || continue
    pid=$(<"$DIR/node-$p.pid")
    # Only a redis-server this script started (its pid file names it).
    if [[ $pid =~ ^[0-9]+$ ]] && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$DIR/node-$p.pid"
  done
  return 0
}

start_nodes() {
  local p ok
  mkdir -p "$DIR"
  for p in "${PORTS[@]}"; do
    if port_open "$p" || port_open $((p + 10000)); then
      die "port $p or its bus port $((p + 10000)) is taken"
    fi
  done
  for p in "${PORTS[@]}"; do
    rm -f "$DIR/nodes-$p.conf"
    redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
      --dir "$DIR" --logfile "$DIR/node-$p.log" --pidfile "$DIR/node-$p.pid" --daemonize yes
  done
  for p in "${PORTS[@]}"; do
    ok=
    for _ in $(seq 1 100); do
      if [[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]]; then
        ok=1
        break
      fi
      sleep 0.1
    done
    [[ -n $ok ]] || { stop_nodes; echo "$SCRIPT_NAME: node $p did not answer" >&2; exit 1; }
  done
  if ! redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    >"$DIR/create.log" 2>&1; then
    cat "$DIR/create.log" >&2
    stop_nodes
    echo "$SCRIPT_NAME: redis-cli --cluster create failed" >&2
    exit 1
  fi
  for p in "${PORTS[@]}"; do
    ok=
    for _ in $(seq 1 200); do
      if redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
        ok=1
        break
      fi
      sleep 0.1
    done
    [[ -n $ok ]] || { stop_nodes; echo "$SCRIPT_NAME: the cluster is not ok on node $p" >&2; exit 1; }
  done
  local urls=("${PORTS[@]/#/redis://127.0.0.1:}")
  (
    IFS=,
    echo "${urls[*]}"
  )
}

case $ACTION in
  start) start_nodes ;;
  stop) stop_nodes ;;
  *) die "usage: $SCRIPT_NAME start|stop DIR PORT" ;;
esac
