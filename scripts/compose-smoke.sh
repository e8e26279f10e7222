#!/usr/bin/env bash
# make compose-smoke: builds the image from the Dockerfile and runs compose.yaml for real, with
# podman (runc) behind docker-compose 1.29, on a machine that reaches no image registry.
#
#   1. base images made here: a Debian bookworm minbase (debootstrap) as the runtime base, a
#      Swift builder (that base + this machine's /opt/swift and package mirrors) and a RabbitMQ
#      with the management plugin (scripts/smoke/rabbitmq.Containerfile); kept between runs
#   2. podman build of the Dockerfile with BUILDER_IMAGE/RUNTIME_IMAGE pointing at them
#   3. make secrets, docker-compose up, then: every service healthy, a price POSTed with the
#      token reaches the boundary as a succeeded operation, the correlation matrix is served,
#      returns-worker scaled to 3, the broker restarted with nothing lost, the boundary
#      recreated with what was published meanwhile kept in its queue, the logs are JSON;
#      then the `cluster` profile: PostgreSQL, three RabbitMQ nodes clustered by configuration
#      (quorum queues), two replicas of every api and worker: a write through each api replica
#      reaches the cluster boundary, is read through the other replica, and one node stopped
#      loses nothing
#   4. docker-compose down -v; the podman service this script started is stopped by its PID
#
# Host ports: 18080-18082, 18180, 18672 (SMOKE_PORT_BASE changes the 18000 part) and free
# ones for the cluster profile's api replicas.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${SMOKE_DIR:-$ROOT/.build-smoke}
PROJECT=stega-smoke
BASE=${SMOKE_PORT_BASE:-18000}
mkdir -p "$WORK"
log() { printf '\n== %s %s\n' "$(date +%T)" "$*"; }
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

log "tools: podman, runc, debootstrap, docker-compose 1.29"
need=()
# netavark (podman's network backend) calls iptables or nft, which a bare machine lacks.
for p in podman runc debootstrap netavark aardvark-dns uidmap iptables nftables; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${need[@]}"
fi
if [ ! -x "$WORK/venv/bin/docker-compose" ]; then
  python3 -m venv "$WORK/venv"
  # docker-compose 1.29 wants PyYAML < 6, whose sdist needs Cython < 3 to build.
  "$WORK/venv/bin/pip" install -q "cython<3" wheel setuptools
  "$WORK/venv/bin/pip" install -q --no-build-isolation "pyyaml==5.4.1"
  # docker-py 6+ and requests 2.32+ broke docker-compose 1.29: the versions it was released with.
  "$WORK/venv/bin/pip" install -q "docker-compose==1.29.2" "docker==5.0.3" "requests<2.32" "urllib3<2"
fi
COMPOSE="$WORK/venv/bin/docker-compose"

cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"

BASE_IMAGE=localhost/stega-base:bookworm
BUILDER_IMAGE=localhost/stega-swift:6.3-bookworm
# Tagged by what they are built from: a change to scripts/smoke builds them again.
smoke_tag=$(cat scripts/smoke/* | sha256sum | cut -c1-12)
RABBITMQ_IMAGE=localhost/stega-rabbitmq:$smoke_tag
POSTGRES_IMAGE=localhost/stega-postgres:$smoke_tag
STACK_IMAGE=localhost/stega-events:smoke

if ! podman image exists "$BASE_IMAGE"; then
  log "base image: debootstrap --variant=minbase bookworm"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian > "$WORK/debootstrap.log"
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE"
  rm -rf "$WORK/rootfs"
fi

if ! podman image exists "$BUILDER_IMAGE"; then
  log "builder image: $BASE_IMAGE + /opt/swift + the package mirrors"
  podman rm -f stega-swift-prep >/dev/null 2>&1 || true
  podman run --name stega-swift-prep -v /opt/swift:/mnt/swift:ro -v /opt/swift-packages:/mnt/packages:ro \
    "$BASE_IMAGE" bash -ec '
      apt-get update -q
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        binutils git gnupg2 libc6-dev libcurl4-openssl-dev libedit2 libgcc-12-dev libpython3-dev \
        libsqlite3-0 libstdc++-12-dev libxml2-dev libz3-dev libncurses6 pkg-config tzdata zlib1g-dev ca-certificates
      rm -rf /var/lib/apt/lists/*
      cp -a /mnt/swift /opt/swift
      cp -a /mnt/packages /opt/swift-packages
      git config --system url./opt/swift-packages/.insteadOf https://github.com/' > "$WORK/builder.log" 2>&1
  podman commit -q --change 'ENV PATH=/opt/swift/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    stega-swift-prep "$BUILDER_IMAGE" >/dev/null
  podman rm stega-swift-prep >/dev/null
fi

if ! podman image exists "$RABBITMQ_IMAGE"; then
  log "broker image: Debian's rabbitmq-server with the management plugin"
  podman build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$RABBITMQ_IMAGE" \
    -f scripts/smoke/rabbitmq.Containerfile scripts/smoke > /dev/null
fi
if ! podman image exists "$POSTGRES_IMAGE"; then
  log "database image: Debian's PostgreSQL 15, initialized like the official image"
  podman build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$POSTGRES_IMAGE" \
    -f scripts/smoke/postgres.Containerfile scripts/smoke > /dev/null
fi

log "podman build of the Dockerfile (BUILDER_IMAGE=$BUILDER_IMAGE, RUNTIME_IMAGE=$BASE_IMAGE)"
start=$(date +%s)
podman build --format docker --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
  -t "$STACK_IMAGE" . > "$WORK/image-build.log" 2>&1 || { tail -40 "$WORK/image-build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s; log in $WORK/image-build.log"
size=$(podman image inspect --format '{{.Size}}' "$STACK_IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")
echo "image $STACK_IMAGE: $(( size / 1000000 )) MB (its base: $(( base_size / 1000000 )) MB)"
echo "runs as uid $(podman run --rm "$STACK_IMAGE" id -u); products: $(podman run --rm "$STACK_IMAGE" ls /opt/stega/bin | tr '\n' ' ')"

log "podman API socket for docker-compose"
SOCK="$WORK/podman.sock"
rm -f "$SOCK"
podman system service --time=0 "unix://$SOCK" > "$WORK/podman-service.log" 2>&1 &
SERVICE_PID=$!
export DOCKER_HOST="unix://$SOCK"
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done

HEALTH_PID=""
cleanup() {
  set +e
  log "docker-compose down -v"
  "$COMPOSE" -p "$PROJECT" down -v --remove-orphans > "$WORK/down.log" 2>&1
  tail -3 "$WORK/down.log"
  [ -n "$HEALTH_PID" ] && kill "$HEALTH_PID" 2>/dev/null
  kill "$SERVICE_PID" 2>/dev/null; wait "$SERVICE_PID" 2>/dev/null
}
trap cleanup EXIT

# podman runs health checks from systemd timers; without systemd this loop runs them.
( while true; do
    for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
      podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
    sleep 2
  done ) &
HEALTH_PID=$!

export STACK_IMAGE RABBITMQ_IMAGE POSTGRES_IMAGE PUBLISH_HOST=127.0.0.1 \
  BOUNDARY_PORT=$((BASE + 80)) RETURNS_API_PORT=$((BASE + 81)) CORRELATIONS_API_PORT=$((BASE + 82)) \
  MANAGEMENT_PORT=$((BASE + 672)) CLUSTER_BOUNDARY_PORT=$((BASE + 180)) \
  CLUSTER_RETURNS_API_PORTS= CLUSTER_CORRELATIONS_API_PORTS=
# podman's Docker API takes no range of host ports: the api replicas of the cluster profile get
# free ones (compose.yaml), found with `docker-compose port`.
scripts/secrets.sh
TOKEN=$(cat secrets/api_token)
B=http://127.0.0.1:$BOUNDARY_PORT R=http://127.0.0.1:$RETURNS_API_PORT C=http://127.0.0.1:$CORRELATIONS_API_PORT

log "docker-compose up -d"
start=$(date +%s)
"$COMPOSE" -p "$PROJECT" up -d --no-build 2>&1 | tail -8
wait_healthy() {  # count [container name pattern]
  local want=$1 pattern=${2:-.} deadline=$(( $(date +%s) + 300 )) healthy
  while :; do
    healthy=$(podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' \
                | grep -E "$pattern" | grep -c '(healthy)' || true)
    [ "$healthy" -ge "$want" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { podman ps -a --format '{{.Names}} {{.Status}}'; "$COMPOSE" -p "$PROJECT" logs --tail 20; exit 1; }
    sleep 2
  done
}
wait_healthy 6
echo "all 6 containers healthy $(( $(date +%s) - start )) s after up"
podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}  {{.Status}}  {{.Ports}}'

post_prices() {  # symbol, first close [returns-api URL]: five days of prices, prints the operation id
  curl -fsS -X POST "${3:-$R}/prices" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"symbol\":\"$1\",\"prices\":[{\"date\":\"2024-01-02\",\"close\":$2},{\"date\":\"2024-01-03\",\"close\":$(( $2 + 2 ))},{\"date\":\"2024-01-04\",\"close\":$(( $2 + 1 ))},{\"date\":\"2024-01-05\",\"close\":$(( $2 + 4 ))},{\"date\":\"2024-01-08\",\"close\":$(( $2 + 3 ))}]}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["operation_id"])'
}
wait_succeeded() {  # operation id [boundary URL]
  local deadline=$(( $(date +%s) + 60 )) status
  while :; do
    status=$(curl -sS "${2:-$B}/operations/$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("status"), len(d.get("events", [])))' 2>/dev/null || true)
    case "$status" in succeeded*) echo "operation $1: $status events"; return 0;; esac
    [ "$(date +%s)" -lt "$deadline" ] || { echo "operation $1 did not succeed: $status"; exit 1; }
    sleep 0.5
  done
}

log "a write without the token is refused"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$R/prices" -H 'Content-Type: application/json' -d '{}')
echo "POST /prices without a token: $code"; [ "$code" = 401 ]

log "POST /prices (AAPL, MSFT) -> boundary -> correlations"
wait_succeeded "$(post_prices AAPL 100)"
wait_succeeded "$(post_prices MSFT 300)"
op=$(curl -fsS -X POST "$C/windows" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
       -d '{"window":3}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["operation_id"])')
wait_succeeded "$op"
echo "GET /correlations?symbols=AAPL,MSFT&window=3: $(curl -fsS "$C/correlations?symbols=AAPL,MSFT&window=3")"

log "the console: GET / on the boundary, and the apis' reads through it (by their compose names)"
# Read whole first: `curl | grep -q` fails under pipefail when grep stops reading early.
page=$(curl -fsS "$B/")
grep -q '<script src="/console/console.js"' <<< "$page"
curl -fsS -o /dev/null "$B/console/console.js"
through=$(curl -fsS "$B/api/correlations/correlations?symbols=AAPL,MSFT&window=3")
echo "GET $B/api/correlations/correlations?symbols=AAPL,MSFT&window=3: $through"
[ "$through" = "$(curl -fsS "$C/correlations?symbols=AAPL,MSFT&window=3")" ]
echo "GET $B/api/returns/symbols: $(curl -fsS "$B/api/returns/symbols")"

log "docker-compose up -d --scale returns-worker=3"
"$COMPOSE" -p "$PROJECT" up -d --no-build --scale returns-worker=3 2>&1 | tail -4
wait_healthy 8
echo "returns-worker containers: $(podman ps --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=returns-worker --format '{{.Names}}' | tr '\n' ' ')"
ops=()
for i in $(seq 1 12); do ops+=("$(post_prices "S$i" $((10 * i)))"); done
for op in "${ops[@]}"; do wait_succeeded "$op" > /dev/null; done
echo "12 more operations succeeded with 3 returns-workers; events handled per worker:"
for c in $(podman ps --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=returns-worker --format '{{.Names}}'); do
  echo "  $c: $(podman logs "$c" 2>&1 | grep -c '"event handled"' || true)"
done

log "broker restart: a write accepted while the broker is down is not lost"
"$COMPOSE" -p "$PROJECT" restart -t 5 rabbitmq > "$WORK/restart.log" 2>&1 &
RESTART_PID=$!
sleep 3
during=$(post_prices AMZN 150)
echo "POST /prices during the restart: accepted as $during"
wait "$RESTART_PID"
wait_healthy 8
wait_succeeded "$during"

log "boundary recreated (a deploy): what was published while it was away waited in its queue"
node() { podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1; }
"$COMPOSE" -p "$PROJECT" stop -t 5 boundary > /dev/null 2>&1
away=$(post_prices NFLX 500)
echo "POST /prices while the boundary is stopped: accepted as $away"
# Its prices_recorded, returns_calculated and correlations_updated, in boundary.boundary.events.
deadline=$(( $(date +%s) + 60 ))
until podman exec "$(node rabbitmq)" rabbitmqctl -q list_queues name messages \
        | awk '$1 == "boundary.boundary.events" && $2 >= 3 {found = 1} END {exit !found}'; do
  [ "$(date +%s)" -lt "$deadline" ] || { podman exec "$(node rabbitmq)" rabbitmqctl -q list_queues name messages consumers; exit 1; }
  sleep 1
done
podman exec "$(node rabbitmq)" rabbitmqctl -q list_queues name messages consumers | grep '^boundary\.'
"$COMPOSE" -p "$PROJECT" up -d --no-build --no-deps --force-recreate boundary 2>&1 | tail -1
wait_healthy 8
wait_succeeded "$away"

log "worker logs (JSON), last lines"
"$COMPOSE" -p "$PROJECT" logs --no-color --tail 2 returns-worker correlations-worker | cut -c1-220

log "docker-compose --profile cluster up -d: PostgreSQL, rabbitmq-1..3, two replicas of every api and worker"
start=$(date +%s)
"$COMPOSE" -p "$PROJECT" --profile cluster up -d --no-build --scale returns-worker=3 2>&1 | tail -4
CLUSTER_NAMES="_(postgres|rabbitmq-[123]|cluster-[a-z-]+)_[0-9]+ "
wait_healthy 13 "$CLUSTER_NAMES"
echo "13 cluster containers healthy $(( $(date +%s) - start )) s after up:"
podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}  {{.Status}}' | grep -E "$CLUSTER_NAMES"
running_nodes() {  # the "Running Nodes" section of cluster_status, on one line
  podman exec "$(node rabbitmq-2)" rabbitmqctl -q cluster_status \
    | awk '/Running Nodes/ {f = 1; next} f && NF {print; seen = 1; next} f && seen {exit}' \
    | grep -o 'rabbit@[a-z0-9-]*' | sort | tr '\n' ' '
}
members=$(running_nodes)
echo "cluster members running: $members"
[ "$members" = "rabbit@rabbitmq-1 rabbit@rabbitmq-2 rabbit@rabbitmq-3 " ]
# Just declared, a quorum queue may not answer list_queues yet (it elects its leader): a few tries.
for _ in 1 2 3 4 5; do
  queues=$(podman exec "$(node rabbitmq-2)" rabbitmqctl -q list_queues --timeout 20 name type 2>&1 || true)
  echo "$queues" | grep -Eq "^returns\.events\s+quorum" && break
  sleep 3
done
echo "queues on the cluster:"; echo "$queues" | sed 's/^/  /'
echo "$queues" | grep -Eq "^returns\.events\s+quorum"
replica() {  # service, index, container port: the replica's URL on the host
  echo "http://$("$COMPOSE" -p "$PROJECT" port --index="$2" "$1" "$3" | tr -d '\r')"
}
CB=http://127.0.0.1:$CLUSTER_BOUNDARY_PORT
CR1=$(replica cluster-returns-api 1 8081) CR2=$(replica cluster-returns-api 2 8081)
CC2=$(replica cluster-correlations-api 2 8082)
echo "returns-api replicas at $CR1 and $CR2, correlations-api replica 2 at $CC2"
op=$(post_prices NVDA 400 "$CR1")
wait_succeeded "$op" "$CB"
op=$(post_prices AMD 80 "$CR2")
wait_succeeded "$op" "$CB"
echo "NVDA, written through cluster-returns-api replica 1, read through replica 2: $(curl -fsS "$CR2/prices/NVDA" | cut -c1-120)"
op=$(curl -fsS -X POST "$CC2/windows" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
       -d '{"window":4}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["operation_id"])')
wait_succeeded "$op" "$CB"
echo "GET /correlations?symbols=AMD,NVDA&window=4 (replica 2): $(curl -fsS "$CC2/correlations?symbols=AMD,NVDA&window=4")"
echo "the cluster boundary's console reads the replicas: $(curl -fsS "$CB/api/correlations/correlations?symbols=AMD,NVDA&window=4")"
echo "tables in PostgreSQL: $(podman exec "$(node postgres)" psql -U stega -d stega -Atc \
  "SELECT string_agg(schemaname || '.' || tablename, ' ' ORDER BY 1) FROM pg_tables WHERE schemaname IN ('returns', 'correlations')")"

log "cluster: rabbitmq-1 killed, a write through each replica still succeeds; started again"
podman kill "$(node rabbitmq-1)" > /dev/null
during=$(post_prices INTC 30 "$CR1")
during2=$(post_prices QCOM 150 "$CR2")
wait_succeeded "$during" "$CB"
wait_succeeded "$during2" "$CB"
podman start "$(node rabbitmq-1)" > /dev/null
wait_healthy 13 "$CLUSTER_NAMES"
echo "rabbitmq-1 back; running: $(running_nodes)"
log "smoke test passed"
