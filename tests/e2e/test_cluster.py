"""A 3-node RabbitMQ cluster of this host's RabbitMQ (scripts/broker-cluster.sh: distinct node
names and ports, one Erlang cookie), quorum queues, and the nodes listed in STEGA_AMQP_URL
(DESIGN.md "Scale-out"): the node the api and the worker are connected to is stopped in the
middle of 1,000 writes, then started again. Nothing accepted is lost, nothing applied twice."""
import os
import subprocess
import time

import pytest
import requests

from conftest import ROOT, wait_until
from test_faults import check_views, dates, inbox_count, load_with_disruption, nodes_connected, writes

CLUSTER = str(ROOT / "scripts/broker-cluster.sh")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not os.environ.get("STEGA_TEST_BROKER_DIR"):
        pytest.skip("run through `make test`, which installs RabbitMQ")
    folder = tmp_path_factory.mktemp("cluster")
    ports = []
    while len(ports) < 3:
        out = subprocess.run(["python3", str(ROOT / "scripts/free-port.py"), "--pair"], capture_output=True,
                             text=True, check=True)
        if int(out.stdout) not in ports:
            ports.append(int(out.stdout))
    try:
        subprocess.run([CLUSTER, "start", str(folder), *map(str, ports)], check=True, capture_output=True,
                       text=True, timeout=300)
        yield folder, [f"amqp://guest:guest@127.0.0.1:{p}" for p in ports]
    finally:
        subprocess.run([CLUSTER, "stop", str(folder)], capture_output=True, timeout=300)


def test_the_node_in_use_stopped_in_the_middle_of_1000_writes_loses_nothing(cluster, stack_factory):
    folder, urls = cluster
    stack = stack_factory(extra_env={"STEGA_AMQP_URL": ",".join(urls), "STEGA_QUEUE_TYPE": "quorum",
                                     "STEGA_RETRY_DELAY_MS": "100"})
    # Stack's own housekeeping (deleting queues) goes through the first node.
    stack.amqp_url = urls[0]
    worker = stack.start("returns-worker")
    api = stack.start("returns-api")
    first, second = urls[0].rsplit("@", 1)[1], urls[1].rsplit("@", 1)[1]
    assert set(nodes_connected(worker)) == {first} and nodes_connected(api) == [first]
    symbols, days = 10, 100
    all_dates = dates(days)
    observations = {}

    def bounce():
        started = time.monotonic()
        subprocess.run([CLUSTER, "stop-node", str(folder), "1"], check=True, capture_output=True, timeout=180)
        observations["stopped_after_s"] = time.monotonic() - started
        observations["accepted_at_stop"] = observations.get("accepted", 0)
        # Both processes go on with another node: the next first (a nack while the quorum
        # queues elect new leaders may move a publisher on to the third).
        for process in (worker, api):
            wait_until(f"{process.name} on another node", lambda: nodes_connected(process)[-1] != first, timeout=60)
            observations[f"{process.name}_went_to"] = next(n for n in nodes_connected(process) if n != first)
        time.sleep(1)
        subprocess.run([CLUSTER, "start-node", str(folder), "1"], check=True, capture_output=True, timeout=300)
        observations["accepted_at_restart"] = observations.get("accepted", 0)
        observations["restarted"] = True

    # Paced (about 80 writes/s from 8 clients) so the load spans the node's stop and start.
    accepted, statuses = load_with_disruption(api.url, writes(symbols, days), all_dates, 300, bounce, observations,
                                              pause=0.1)
    print(f"cluster: {observations}")
    assert observations.get("restarted"), observations
    # Where each went first when its node stopped: the node after it in the list.
    assert observations["returns-worker_went_to"] == second and observations["returns-api_went_to"] == second, observations
    assert observations["accepted_at_stop"] < symbols * days, observations
    # Every write was accepted (the outbox does not need the broker), and each was applied once.
    assert len(accepted) == symbols * days, {s: statuses.count(s) for s in set(statuses)}
    check_views(stack, symbols, days, all_dates)
    wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=120)
    assert requests.get(api.url + "/readyz", timeout=5).status_code == 200
    assert stack.stop() == {"returns-worker": 0, "returns-api": 0}
