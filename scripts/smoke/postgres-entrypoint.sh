#!/bin/sh
# What the official postgres image's entrypoint does that compose.yaml relies on: on an empty
# data directory, initdb with POSTGRES_USER as the superuser and the password of
# POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD), password logins from any host, and the
# database POSTGRES_DB; then run the command (postgres) as this user.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    printf '%s' "$(cat "$POSTGRES_PASSWORD_FILE")" > "$pwfile"
  else
    printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE is needed}" > "$pwfile"
  fi
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    createdb -U "$user" "$db"
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "postgres-entrypoint: initialized $PGDATA (superuser $user, database $db)"
fi
exec "$@"
