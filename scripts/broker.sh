#!/usr/bin/env bash
# A throw-away RabbitMQ node of our own: its own node name, ports, data and cookie under
# one folder, so it never clashes with another broker on the machine.
#
#   scripts/broker.sh start DIR PORT   # starts the node, waits until it answers
#   scripts/broker.sh stop DIR         # stops the node started in DIR (by its PID)
#   scripts/broker.sh restart DIR      # stop, then start again with the same data
#   scripts/broker.sh ctl DIR ARGS...  # rabbitmqctl against that node
#
# With STEGA_BROKER_TLS_PORT set at start, the node also listens for TLS (amqps) on that port,
# with DIR/tls/{ca.pem,server.pem,server.key} (scripts/test-ca.sh DIR/tls makes them).
set -euo pipefail

cmd=${1:?usage: broker.sh start|stop|restart|ctl DIR [PORT]}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
bin=/usr/lib/rabbitmq/bin

env_for() {
  local port=$1
  export HOME="$dir"
  export RABBITMQ_NODENAME="stega-$port@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$port"
  export RABBITMQ_DIST_PORT=$((port + 20000))
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_CRASH_DUMP="$dir/erl_crash.dump"
}

start() {
  local port=${1:?PORT}
  echo "$port" > "$dir/port"
  env_for "$port"
  mkdir -p "$dir/log" "$dir/mnesia"
  [ -f "$dir/.erlang.cookie" ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/.erlang.cookie"; chmod 400 "$dir/.erlang.cookie"; }
  cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
disk_free_limit.absolute = 50MB
loopback_users = none
log.console = false
log.file.level = warning
CONF
  [ -z "${STEGA_BROKER_TLS_PORT:-}" ] || echo "$STEGA_BROKER_TLS_PORT" > "$dir/tls_port"
  if [ -f "$dir/tls_port" ]; then
    cat >> "$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$(cat "$dir/tls_port")
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  fi
  echo "[]." > "$dir/enabled_plugins"
  echo "[]." > "$dir/advanced.config"
  nohup "$bin/rabbitmq-server" > "$dir/log/startup.log" 2>&1 &
  echo $! > "$dir/server.pid"
  # Wait until the node answers (rabbitmqctl wait needs the pid file written by the node).
  for _ in $(seq 1 120); do
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then break; fi
    if [ -f "$RABBITMQ_PID_FILE" ] && "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" await_startup >/dev/null 2>&1; then
      echo "broker up: amqp://guest:guest@127.0.0.1:$port (node $RABBITMQ_NODENAME, data $dir)"
      return 0
    fi
    sleep 1
  done
  echo "broker did not start; see $dir/log" >&2
  tail -20 "$dir/log/startup.log" >&2 || true
  return 1
}

stop() {
  [ -f "$dir/port" ] || return 0
  env_for "$(cat "$dir/port")"
  "$bin/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" shutdown >/dev/null 2>&1 || true
  if [ -f "$dir/server.pid" ]; then
    local pid; pid=$(cat "$dir/server.pid")
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/server.pid"
  fi
}

case "$cmd" in
  start) start "${3:?PORT}" ;;
  stop) stop ;;
  restart) port=$(cat "$dir/port"); stop; start "$port" ;;
  ctl) shift 2; env_for "$(cat "$dir/port")"; "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@" ;;
  *) echo "usage: broker.sh start|stop|restart|ctl DIR [PORT]" >&2; exit 2 ;;
esac
