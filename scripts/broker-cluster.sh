#!/usr/bin/env bash
# A throw-away RabbitMQ cluster of three nodes on this host (scripts/broker.sh for each: its
# own node name stega-PORT@localhost, ports and data), one Erlang cookie, the second and third
# joined to the first.
#
#   scripts/broker-cluster.sh start DIR PORT1 PORT2 PORT3   # DIR/n1..n3; prints the nodes' URLs
#   scripts/broker-cluster.sh stop DIR                      # stops the three nodes
#   scripts/broker-cluster.sh stop-node DIR N | start-node DIR N   # one node (1..3), data kept
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?usage: broker-cluster.sh start|stop|stop-node|start-node DIR ...}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)

case "$cmd" in
  start)
    shift 2
    [ $# -eq 3 ] || { echo "usage: broker-cluster.sh start DIR PORT1 PORT2 PORT3" >&2; exit 2; }
    # One cookie for the three (each node's HOME is its folder).
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/cookie"
    i=1
    for port in "$@"; do
      mkdir -p "$dir/n$i"
      install -m 400 "$dir/cookie" "$dir/n$i/.erlang.cookie"
      "$here/broker.sh" start "$dir/n$i" "$port" >/dev/null
      i=$((i + 1))
    done
    first="stega-$1@localhost"
    for i in 2 3; do
      "$here/broker.sh" ctl "$dir/n$i" -q stop_app
      "$here/broker.sh" ctl "$dir/n$i" -q join_cluster "$first"
      "$here/broker.sh" ctl "$dir/n$i" -q start_app
    done
    "$here/broker.sh" ctl "$dir/n1" -q await_online_nodes 3
    echo "cluster up: amqp://guest:guest@127.0.0.1:$1,amqp://guest:guest@127.0.0.1:$2,amqp://guest:guest@127.0.0.1:$3"
    ;;
  stop)
    for i in 1 2 3; do [ -d "$dir/n$i" ] && "$here/broker.sh" stop "$dir/n$i"; done
    ;;
  stop-node)
    "$here/broker.sh" stop "$dir/n${3:?N}"
    ;;
  start-node)
    "$here/broker.sh" start "$dir/n${3:?N}" "$(cat "$dir/n$3/port")" >/dev/null
    ;;
  *) echo "usage: broker-cluster.sh start|stop|stop-node|start-node DIR ..." >&2; exit 2 ;;
esac
