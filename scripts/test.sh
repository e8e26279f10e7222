#!/usr/bin/env bash
# make test: a throw-away RabbitMQ and PostgreSQL of our own, the Swift tests (unit, HTTP, integration),
# the end-to-end tests with real clients against the real binaries, and 10 s of each fuzz
# target; the broker and PostgreSQL are stopped afterwards, pass or fail.
set -uo pipefail
cd "$(dirname "$0")/.."

broker_dir=$(mktemp -d /tmp/stega-test-broker.XXXXXX)
postgres_dir=$(mktemp -d /tmp/stega-test-postgres.XXXXXX)
port=$(python3 scripts/ports.py --pair)
cleanup() {
  scripts/broker.sh stop "$broker_dir" || true
  scripts/postgres.sh stop "$postgres_dir" || true
  rm -rf "$broker_dir" "$postgres_dir"
}
trap cleanup EXIT INT TERM

# A TLS listener too, with a certificate authority made for this run (the TLS test).
scripts/test-ca.sh "$broker_dir/tls"
read -r tls_port postgres_port <<< "$(python3 scripts/ports.py --count 2 --avoid "$port" --avoid "$((port + 20000))")"
STEGA_BROKER_TLS_PORT=$tls_port scripts/broker.sh start "$broker_dir" "$port" || exit 1
export STEGA_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$port"
export STEGA_TEST_AMQPS_URL="amqps://guest:guest@localhost:$tls_port"
export STEGA_TEST_TLS_CA="$broker_dir/tls/ca.pem"
export STEGA_TEST_BROKER_DIR="$broker_dir"
export STEGA_BIN_DIR="$(swift build --show-bin-path)"

# A throw-away PostgreSQL too: the store conformance suite and the end-to-end tests on PostgreSQL.
# It accepts TLS too, with the broker's test certificate (the sslmode test).
STEGA_POSTGRES_TLS="$broker_dir/tls" scripts/postgres.sh start "$postgres_dir" "$postgres_port" || exit 1
export STEGA_TEST_DATABASE_URL="$(scripts/postgres.sh url "$postgres_dir")?sslmode=disable"
export STEGA_TEST_POSTGRES_DIR="$postgres_dir"

status=0
echo "== swift test (unit, HTTP, integration against $STEGA_TEST_AMQP_URL)"
swift test --skip-build --disable-xctest || status=1

echo "== end-to-end tests (pytest, real binaries and clients)"
python3 -m pytest tests/e2e -q -p no:cacheprovider || status=1

echo "== fuzzing: each libFuzzer target for 10 s (make fuzz runs them longer)"
FUZZ_SECONDS=10 scripts/fuzz.sh || status=1
exit $status
