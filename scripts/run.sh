#!/usr/bin/env bash
# make run / run-cluster / stop / status: the services natively, in the background, without Docker.
#   start          a local broker (unless STEGA_AMQP_URL is set), then every api and worker,
#                  logs in run/logs/<name>.log; waits until each /readyz answers 200
#   start-cluster  DESIGN.md "Scale-out" on one host: a local PostgreSQL, a 3-node RabbitMQ
#                  cluster (quorum queues), two replicas of every api and worker, the boundary
#   stop           stops exactly what start or start-cluster started (by the PIDs it recorded)
#   status         what runs, and whether it is ready
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=run
BIN=${STEGA_BIN_DIR:-.build/release}
# name:port of every process, in start order (workers first, so their queues exist).
PROCESSES=("returns-worker:9081" "correlations-worker:9082" "boundary:8080" "returns-api:8081" "correlations-api:8082")

# Starts `name` (binary `bin`) on `port` unless it runs; records its PID and the start order.
launch() {
  local name=$1 bin=$2 port=$3 pidfile="$RUN/pids/$1.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  STEGA_HTTP_PORT=$port nohup "$BIN/$bin" >> "$RUN/logs/$name.log" 2>&1 &
  echo $! > "$pidfile"
  grep -qx "$name:$port" "$RUN/order" 2>/dev/null || echo "$name:$port" >> "$RUN/order"
}

# Waits until every process started answers /readyz with 200.
await_ready() {
  while IFS= read -r entry; do
    name=${entry%%:*}; port=${entry##*:}
    for _ in $(seq 1 150); do
      if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then break; fi
      if ! kill -0 "$(cat "$RUN/pids/$name.pid")" 2>/dev/null; then
        echo "$name exited; its log:" >&2; tail -n 20 "$RUN/logs/$name.log" >&2; exit 1
      fi
      sleep 0.2
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "$name is not ready; see $RUN/logs/$name.log" >&2; exit 1; }
  done < "$RUN/order"
}

# `port` when it (and, with a second argument, it + 20000: a broker node's distribution
# port) is free on 127.0.0.1; another free one otherwise.
pick_port() {
  local port=$1 pair=${2:-}
  if python3 -c "import socket
for p in ($port,) + (($port + 20000,) if '$pair' else ()): socket.socket().bind(('127.0.0.1', p))" 2>/dev/null; then
    echo "$port"
  elif [ -n "$pair" ]; then
    python3 scripts/ports.py --pair
  else
    python3 scripts/ports.py
  fi
}

start_cluster() {
  mkdir -p "$RUN/logs" "$RUN/pids"
  [ -f "$RUN/order" ] && [ "$(cat "$RUN/mode" 2>/dev/null)" != cluster ] && { echo "make run is running: make stop first" >&2; exit 1; }
  echo cluster > "$RUN/mode"
  if [ ! -f "$RUN/postgres/data/postmaster.pid" ]; then
    scripts/postgres.sh start "$RUN/postgres" "$(cat "$RUN/postgres/port" 2>/dev/null || pick_port 5432)" >/dev/null
  fi
  if kill -0 "$(cat "$RUN/cluster/n1/server.pid" 2>/dev/null || echo 0)" 2>/dev/null && [ -s "$RUN/amqp_url" ]; then
    :  # running
  elif [ -f "$RUN/cluster/n3/port" ]; then
    # The cluster of an earlier run: its three nodes again, with their data, ports and cookie,
    # all at once (a node of a cluster waits at boot for the others).
    for i in 1 2 3; do scripts/broker-cluster.sh start-node "$RUN/cluster" "$i" & done
    wait
    urls=()
    for i in 1 2 3; do urls+=("amqp://guest:guest@127.0.0.1:$(cat "$RUN/cluster/n$i/port")"); done
    (IFS=,; echo "${urls[*]}") > "$RUN/amqp_url"
  else
    ports=()
    for p in 5672 5673 5674; do
      p=$(pick_port "$p" pair)
      while [[ " ${ports[*]} " == *" $p "* ]]; do p=$(python3 scripts/ports.py --pair); done
      ports+=("$p")
    done
    scripts/broker-cluster.sh start "$RUN/cluster" "${ports[@]}" | sed -n 's/^cluster up: //p' > "$RUN/amqp_url"
  fi
  export STEGA_AMQP_URL=$(cat "$RUN/amqp_url")
  export STEGA_DATABASE_URL="$(scripts/postgres.sh url "$RUN/postgres")?sslmode=disable"
  export STEGA_QUEUE_TYPE=quorum
  # Workers first (their queues exist before the apis publish); replica 1 on the usual
  # port, replica 2 on it + 100.
  for entry in returns-worker:9081 correlations-worker:9082 boundary:8080 returns-api:8081 correlations-api:8082; do
    name=${entry%%:*}; port=${entry##*:}
    if [ "$name" = boundary ]; then launch boundary boundary "$port"; continue; fi
    launch "$name-1" "$name" "$port"
    launch "$name-2" "$name" "$((port + 100))"
  done
  await_ready
  cat <<MSG

stega events is running as a cluster on this host.
  PostgreSQL           ${STEGA_DATABASE_URL%%\?*}   (schemas returns, correlations)
  RabbitMQ nodes       $STEGA_AMQP_URL   (quorum queues)
  returns-api          http://127.0.0.1:8081  http://127.0.0.1:8181
  correlations-api     http://127.0.0.1:8082  http://127.0.0.1:8182
  returns-worker       http://127.0.0.1:9081  http://127.0.0.1:9181   (competing consumers)
  correlations-worker  http://127.0.0.1:9082  http://127.0.0.1:9182   (one active, one standing by)
  boundary             http://127.0.0.1:8080
  console              http://127.0.0.1:8080/   (open it in a browser: events, operations, heatmap, charts)
  logs                 $RUN/logs/<name>.log
Try:
  curl -s -X POST http://127.0.0.1:8181/prices -H 'Content-Type: application/json' \\
       -d '{"symbol":"AAPL","prices":[{"date":"2024-01-02","close":185.64},{"date":"2024-01-03","close":184.25}]}'
  curl -s http://127.0.0.1:8081/returns/AAPL
  scripts/broker-cluster.sh stop-node $RUN/cluster 1    # a node goes; the processes move to the next
  scripts/postgres.sh restart $RUN/postgres             # writes answer 503 meanwhile, then recover
Stop with: make stop
MSG
}

start() {
  mkdir -p "$RUN/logs" "$RUN/pids"
  [ "$(cat "$RUN/mode" 2>/dev/null)" = cluster ] && { echo "make run-cluster is running: make stop first" >&2; exit 1; }
  echo single > "$RUN/mode"
  if [ -z "${STEGA_AMQP_URL:-}" ]; then
    if [ -f "$RUN/amqp_url" ] && [ -f "$RUN/broker/server.pid" ] && kill -0 "$(cat "$RUN/broker/server.pid")" 2>/dev/null; then
      STEGA_AMQP_URL=$(cat "$RUN/amqp_url")
    else
      port=5672
      # 5672 when it and its Erlang distribution port (+20000) are free, another pair otherwise.
      python3 -c "import socket
for p in ($port, $port + 20000): socket.socket().bind(('127.0.0.1', p))" 2>/dev/null \
        || port=$(python3 scripts/ports.py --pair)
      scripts/broker.sh start "$RUN/broker" "$port"
      STEGA_AMQP_URL="amqp://guest:guest@127.0.0.1:$port"
      echo "$STEGA_AMQP_URL" > "$RUN/amqp_url"
    fi
  fi
  export STEGA_AMQP_URL
  export STEGA_DATA_DIR=${STEGA_DATA_DIR:-$RUN/data}
  for entry in "${PROCESSES[@]}"; do
    launch "${entry%%:*}" "${entry%%:*}" "${entry##*:}"
  done
  await_ready
  cat <<MSG

stega events is running.
  broker               $STEGA_AMQP_URL
  returns-api          http://127.0.0.1:8081   (POST /prices, GET /symbols, /prices/{s}, /returns/{s}[/summary])
  correlations-api     http://127.0.0.1:8082   (POST /windows, GET /correlations?symbols=A,B&window=N)
  returns-worker       http://127.0.0.1:9081   (GET /healthz, /readyz)
  correlations-worker  http://127.0.0.1:9082   (GET /healthz, /readyz)
  boundary             http://127.0.0.1:8080   (GET /operations/{id}, /operations/{id}/events)
  console              http://127.0.0.1:8080/  (open it in a browser: events, operations, heatmap, charts)
  logs                 $RUN/logs/<name>.log    (make logs tails the workers)
  data                 $STEGA_DATA_DIR
Try:
  curl -s -X POST http://127.0.0.1:8081/prices -H 'Content-Type: application/json' \\
       -d '{"symbol":"AAPL","prices":[{"date":"2024-01-02","close":185.64},{"date":"2024-01-03","close":184.25}]}'
  curl -s http://127.0.0.1:8081/returns/AAPL
  curl -s 'http://127.0.0.1:8082/correlations?symbols=AAPL,MSFT&window=20'
The CLI (README, "The stega CLI"): $BIN/stega --help
  $BIN/stega daemon start   records the outcome of every write; $BIN/stega ops lists them
Stop with: make stop
MSG
}

stop() {
  if [ -f "$RUN/order" ]; then
    # Last started, first stopped (the apis before the workers).
    tac "$RUN/order" | while IFS= read -r entry; do
      name=${entry%%:*}
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
    rm -f "$RUN/order"
  fi
  if [ -f "$RUN/broker/server.pid" ]; then
    scripts/broker.sh stop "$RUN/broker" && echo "stopped the local broker"
  fi
  if ls "$RUN"/cluster/n*/server.pid >/dev/null 2>&1; then
    scripts/broker-cluster.sh stop "$RUN/cluster" && echo "stopped the local RabbitMQ cluster"
  fi
  if [ -f "$RUN/postgres/data/postmaster.pid" ]; then
    scripts/postgres.sh stop "$RUN/postgres" && echo "stopped the local PostgreSQL"
  fi
  rm -f "$RUN/amqp_url" "$RUN/mode"
}

status() {
  [ -f "$RUN/order" ] || { echo "nothing started (make run, make run-cluster)"; return; }
  while IFS= read -r entry; do
    name=${entry%%:*}; port=${entry##*:}
    pidfile="$RUN/pids/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
      printf '%-22s running (pid %s)  readyz %s  http://127.0.0.1:%s\n' "$name" "$(cat "$pidfile")" "$ready" "$port"
    else
      printf '%-22s stopped\n' "$name"
    fi
  done < "$RUN/order"
  if [ -f "$RUN/amqp_url" ]; then echo "broker                 $(cat "$RUN/amqp_url")"; fi
  if [ -f "$RUN/postgres/data/postmaster.pid" ]; then echo "postgres               $(scripts/postgres.sh url "$RUN/postgres")"; fi
}

case "${1:-}" in
  start) start ;;
  start-cluster) start_cluster ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: run.sh start|start-cluster|stop|status" >&2; exit 2 ;;
esac
