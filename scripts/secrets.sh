#!/usr/bin/env bash
# Writes ./secrets/{rabbitmq.conf,amqp_url,api_token} for compose.yaml with a random password
# and token; a file that is already there is kept. Layout: secrets.example/README.md.
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
chmod 644 secrets/rabbitmq.conf secrets/amqp_url secrets/api_token
