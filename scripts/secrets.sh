#!/usr/bin/env bash
# Writes ./secrets/{rabbitmq.conf,amqp_url,api_token} for compose.yaml with a random password
# and token, and the `cluster` profile's {postgres_secret,database_url,rabbitmq_cluster.conf,
# erlang_cookie,amqp_cluster_url}; a file that is already there is kept. Layout:
# secrets.example/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022
mkdir -p secrets
chmod 700 secrets
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
if [ -s secrets/rabbitmq.conf ] && [ -s secrets/amqp_url ]; then
  echo "secrets: kept secrets/rabbitmq.conf and secrets/amqp_url"
elif [ -e secrets/rabbitmq.conf ] || [ -e secrets/amqp_url ]; then
  echo "secrets: only one of secrets/rabbitmq.conf and secrets/amqp_url is there; both carry the" \
       "broker password, so remove it (or write the other by hand) and run make secrets again" >&2
  exit 1
else
  password=$(random)
  printf 'default_user = stega\ndefault_pass = %s\n' "$password" > secrets/rabbitmq.conf
  printf 'amqp://stega:%s@rabbitmq:5672\n' "$password" > secrets/amqp_url
  echo "secrets: wrote secrets/rabbitmq.conf and secrets/amqp_url (user stega, a new random password)"
fi
if [ ! -e secrets/api_token ]; then
  random > secrets/api_token
  echo "secrets: wrote secrets/api_token (write endpoints need 'Authorization: Bearer \$(cat secrets/api_token)')"
else
  echo "secrets: kept secrets/api_token"
fi
# The cluster profile (compose.yaml): PostgreSQL's password and URL, the three nodes'
# configuration (user, password, peers), their shared Erlang cookie, their URLs.
if [ -s secrets/postgres_secret ] && [ -s secrets/database_url ]; then
  echo "secrets: kept secrets/postgres_secret and secrets/database_url"
else
  password=$(random)
  printf '%s\n' "$password" > secrets/postgres_secret
  printf 'postgres://stega:%s@postgres:5432/stega?sslmode=disable\n' "$password" > secrets/database_url
  echo "secrets: wrote secrets/postgres_secret and secrets/database_url (role stega, a new random password)"
fi
if [ -s secrets/rabbitmq_cluster.conf ] && [ -s secrets/amqp_cluster_url ] && [ -s secrets/erlang_cookie ]; then
  echo "secrets: kept secrets/rabbitmq_cluster.conf, secrets/amqp_cluster_url and secrets/erlang_cookie"
else
  password=$(random)
  {
    printf 'default_user = stega\ndefault_pass = %s\n' "$password"
    printf 'cluster_formation.peer_discovery_backend = classic_config\n'
    for i in 1 2 3; do printf 'cluster_formation.classic_config.nodes.%s = rabbit@rabbitmq-%s\n' "$i" "$i"; done
  } > secrets/rabbitmq_cluster.conf
  printf 'amqp://stega:%s@rabbitmq-1:5672,amqp://stega:%s@rabbitmq-2:5672,amqp://stega:%s@rabbitmq-3:5672\n' \
    "$password" "$password" "$password" > secrets/amqp_cluster_url
  random > secrets/erlang_cookie
  echo "secrets: wrote secrets/rabbitmq_cluster.conf, secrets/amqp_cluster_url and secrets/erlang_cookie"
fi
chmod 644 secrets/rabbitmq.conf secrets/amqp_url secrets/api_token secrets/postgres_secret secrets/database_url \
  secrets/rabbitmq_cluster.conf secrets/amqp_cluster_url secrets/erlang_cookie
