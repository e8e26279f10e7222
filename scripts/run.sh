#!/usr/bin/env bash
# make run / stop / status: the services natively, in the background, without Docker.
#   start   a local broker (unless STEGA_AMQP_URL is set), then every api and worker,
#           logs in run/logs/<name>.log; waits until each /readyz answers 200
#   stop    stops exactly what start started (by the PIDs it recorded)
#   status  what runs, and whether it is ready
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=run
BIN=${STEGA_BIN_DIR:-.build/release}
# name:port of every process, in start order (workers first, so their queues exist).
PROCESSES=("returns-worker:9081" "correlations-worker:9082" "boundary:8080" "returns-api:8081" "correlations-api:8082")

start() {
  mkdir -p "$RUN/logs" "$RUN/pids"
  if [ -z "${STEGA_AMQP_URL:-}" ]; then
    if [ -f "$RUN/amqp_url" ] && [ -f "$RUN/broker/server.pid" ] && kill -0 "$(cat "$RUN/broker/server.pid")" 2>/dev/null; then
      STEGA_AMQP_URL=$(cat "$RUN/amqp_url")
    else
      port=5672
      # 5672 when it and its Erlang distribution port (+20000) are free, another pair otherwise.
      python3 -c "import socket
for p in ($port, $port + 20000): socket.socket().bind(('127.0.0.1', p))" 2>/dev/null \
        || port=$(python3 scripts/free-port.py --pair)
      scripts/broker.sh start "$RUN/broker" "$port"
      STEGA_AMQP_URL="amqp://guest:guest@127.0.0.1:$port"
      echo "$STEGA_AMQP_URL" > "$RUN/amqp_url"
    fi
  fi
  export STEGA_AMQP_URL
  export STEGA_DATA_DIR=${STEGA_DATA_DIR:-$RUN/data}
  for entry in "${PROCESSES[@]}"; do
    name=${entry%%:*}; port=${entry##*:}
    pidfile="$RUN/pids/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$name already running (pid $(cat "$pidfile"))"
      continue
    fi
    STEGA_HTTP_PORT=$port nohup "$BIN/$name" >> "$RUN/logs/$name.log" 2>&1 &
    echo $! > "$pidfile"
  done
  for entry in "${PROCESSES[@]}"; do
    name=${entry%%:*}; port=${entry##*:}
    for _ in $(seq 1 100); do
      if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then break; fi
      if ! kill -0 "$(cat "$RUN/pids/$name.pid")" 2>/dev/null; then
        echo "$name exited; its log:" >&2; tail -n 20 "$RUN/logs/$name.log" >&2; exit 1
      fi
      sleep 0.2
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "$name is not ready; see $RUN/logs/$name.log" >&2; exit 1; }
  done
  cat <<MSG

stega events is running.
  broker               $STEGA_AMQP_URL
  returns-api          http://127.0.0.1:8081   (POST /prices, GET /symbols, /prices/{s}, /returns/{s}[/summary])
  correlations-api     http://127.0.0.1:8082   (POST /windows, GET /correlations?symbols=A,B&window=N)
  returns-worker       http://127.0.0.1:9081   (GET /healthz, /readyz)
  correlations-worker  http://127.0.0.1:9082   (GET /healthz, /readyz)
  boundary             http://127.0.0.1:8080   (GET /operations/{id}, /operations/{id}/events)
  logs                 $RUN/logs/<name>.log    (make logs tails the workers)
  data                 $STEGA_DATA_DIR
Try:
  curl -s -X POST http://127.0.0.1:8081/prices -H 'Content-Type: application/json' \\
       -d '{"symbol":"AAPL","prices":[{"date":"2024-01-02","close":185.64},{"date":"2024-01-03","close":184.25}]}'
  curl -s http://127.0.0.1:8081/returns/AAPL
  curl -s 'http://127.0.0.1:8082/correlations?symbols=AAPL,MSFT&window=20'
Stop with: make stop
MSG
}

stop() {
  for ((i=${#PROCESSES[@]}-1; i>=0; i--)); do
    name=${PROCESSES[$i]%%:*}
    pidfile="$RUN/pids/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then echo "$name did not stop in 10 s; killing"; kill -KILL "$pid"; fi
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
  done
  if [ -f "$RUN/broker/server.pid" ]; then
    scripts/broker.sh stop "$RUN/broker" && echo "stopped the local broker"
    rm -f "$RUN/amqp_url"
  fi
}

status() {
  for entry in "${PROCESSES[@]}"; do
    name=${entry%%:*}; port=${entry##*:}
    pidfile="$RUN/pids/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
      printf '%-20s running (pid %s)  readyz %s  http://127.0.0.1:%s\n' "$name" "$(cat "$pidfile")" "$ready" "$port"
    else
      printf '%-20s stopped\n' "$name"
    fi
  done
  if [ -f "$RUN/broker/server.pid" ] && kill -0 "$(cat "$RUN/broker/server.pid")" 2>/dev/null; then
    echo "broker               running  $(cat "$RUN/amqp_url" 2>/dev/null)"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: run.sh start|stop|status" >&2; exit 2 ;;
esac
