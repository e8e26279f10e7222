#!/usr/bin/env bash
# A throw-away PostgreSQL server of our own (Debian's postgresql package): its own data folder,
# port and socket under one folder, so it never clashes with another server on the machine.
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user.
#
#   scripts/postgres.sh start DIR PORT   # initdb if new, start, wait, create database `stega`
#   scripts/postgres.sh stop DIR         # fast shutdown of the server started in DIR
#   scripts/postgres.sh restart DIR      # stop, then start again with the same data
#   scripts/postgres.sh url DIR          # postgres://stega:stega@127.0.0.1:PORT/stega
#   scripts/postgres.sh psql DIR ARGS... # psql against that server's database
# With STEGA_POSTGRES_TLS=CERTDIR at start (CERTDIR/server.pem and server.key, as
# scripts/test-ca.sh makes them), the server also accepts TLS (ssl = on) with that certificate.
#
#   scripts/postgres.sh newdb DIR NAME   # a new empty database NAME owned by stega; prints its URL
#   scripts/postgres.sh dropdb DIR NAME  # drops it (closing its connections)
set -euo pipefail

cmd=${1:?usage: postgres.sh start|stop|restart|url|psql|newdb|dropdb DIR [PORT|NAME]}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local port=${1:-$(cat "$dir/port" 2>/dev/null)}
  [ -n "$port" ] || { echo "postgres.sh: PORT?" >&2; exit 1; }
  echo "$port" > "$dir/port"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    echo postgres > "$dir/pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pwfile"
    as_owner "$bin/initdb" -D "$dir/data" -A scram-sha-256 -U postgres --pwfile="$dir/pwfile" \
      -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/pwfile"
  fi
  local tls=""
  if [ -n "${STEGA_POSTGRES_TLS:-}" ]; then
    install -m 600 "$STEGA_POSTGRES_TLS/server.pem" "$dir/server.pem"
    install -m 600 "$STEGA_POSTGRES_TLS/server.key" "$dir/server.key"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/server.pem" "$dir/server.key"
  fi
  # Kept for later starts (restart, or start after stop).
  [ -f "$dir/server.pem" ] && tls="-c ssl=on -c ssl_cert_file=$dir/server.pem -c ssl_key_file=$dir/server.key"
  # fsync stays on: the tests and the bench measure what users would run.
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 $tls" start >/dev/null
  if ! PGPASSWORD=postgres "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
      "SELECT 1 FROM pg_roles WHERE rolname = 'stega'" postgres | grep -q 1; then
    PGPASSWORD=postgres "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 postgres \
      -c "CREATE ROLE stega LOGIN PASSWORD 'stega'" -c "CREATE DATABASE stega OWNER stega"
  fi
  echo "postgres.sh: PostgreSQL on 127.0.0.1:$port ($dir)"
}

stop() {
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || true
}

case "$cmd" in
  start) start "${3:-}" ;;
  stop) stop ;;
  restart) stop; start ;;
  url) echo "postgres://stega:stega@127.0.0.1:$(cat "$dir/port")/stega" ;;
  newdb)
    name=${3:?NAME}
    PGPASSWORD=postgres "$bin/psql" -q -h 127.0.0.1 -p "$(cat "$dir/port")" -U postgres -v ON_ERROR_STOP=1 postgres \
      -c "CREATE DATABASE \"$name\" OWNER stega" >/dev/null
    echo "postgres://stega:stega@127.0.0.1:$(cat "$dir/port")/$name" ;;
  dropdb)
    PGPASSWORD=postgres "$bin/psql" -q -h 127.0.0.1 -p "$(cat "$dir/port")" -U postgres postgres \
      -c "DROP DATABASE IF EXISTS \"${3:?NAME}\" WITH (FORCE)" >/dev/null ;;
  psql) shift 2; PGPASSWORD=stega "$bin/psql" -h 127.0.0.1 -p "$(cat "$dir/port")" -U stega stega "$@" ;;
  *) echo "usage: postgres.sh start|stop|restart|url|psql|newdb|dropdb DIR [PORT|NAME]" >&2; exit 2 ;;
esac
