"""A 3-node RabbitMQ cluster of this host's RabbitMQ (scripts/broker-cluster.sh: distinct node
names and ports, one Erlang cookie), quorum queues, and the nodes listed in STEGA_AMQP_URL
(DESIGN.md "Scale-out"): the node the api and the worker are connected to is stopped in the
middle of 1,000 writes, then started again. Nothing accepted is lost, nothing applied twice."""
import os
import subprocess
import threading
import time

import pytest
import requests

from conftest import ROOT, free_port, wait_until
from test_faults import (check_returns, check_views, dates, inbox_count, load_with_disruption, nodes_connected,
                         run_load, writes)

CLUSTER = str(ROOT / "scripts/broker-cluster.sh")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not os.environ.get("STEGA_TEST_BROKER_DIR"):
        pytest.skip("run through `make test`, which installs RabbitMQ")
    folder = tmp_path_factory.mktemp("cluster")
    ports = [free_port(pair=True) for _ in range(3)]
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

    # Paced (about 80 writes/s from 8 clients) so the load spans the node's stop and start;
    # past 700 it waits for the stop (which took 14 s on a loaded machine).
    accepted, statuses = load_with_disruption(api.url, writes(symbols, days), all_dates, 300, bounce, observations,
                                              pause=0.1, hold=(700, lambda: "accepted_at_stop" in observations))
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


def test_on_postgresql_with_two_replicas_the_node_in_use_stopped_in_the_middle_of_1000_writes_loses_nothing(
        cluster, postgres_db, stack_factory):
    """The same, scaled out: two replicas of returns-api and of returns-worker on one
    PostgreSQL database, every one of them on the node that is stopped."""
    from test_postgres import KeyCounter, sql
    folder, urls = cluster
    url = postgres_db()
    stack = stack_factory(extra_env={"STEGA_AMQP_URL": ",".join(urls), "STEGA_QUEUE_TYPE": "quorum",
                                     "STEGA_RETRY_DELAY_MS": "100", "STEGA_DATABASE_URL": url})
    stack.amqp_url = urls[0]
    names = ["returns-worker", "returns-worker-2", "returns-api", "returns-api-2"]
    for name in names:
        stack.start(name.removesuffix("-2"), alias=name)
    processes = [stack.processes[n] for n in names]
    first = urls[0].rsplit("@", 1)[1]
    assert all(set(nodes_connected(p)) == {first} for p in processes)
    # Counts returns_calculated from the third node, which stays up.
    counter = KeyCounter(urls[2], stack.exchange, ["returns.events.returns_calculated"])
    symbols, days = 10, 100
    all_dates = dates(days)
    items = writes(symbols, days)
    observations, progress = {}, {0: 0, 1: 0}

    def bounce():
        subprocess.run([CLUSTER, "stop-node", str(folder), "1"], check=True, capture_output=True, timeout=180)
        observations["accepted_at_stop"] = sum(progress.values())
        for process in processes:
            wait_until(f"{process.name} on another node", lambda: nodes_connected(process)[-1] != first, timeout=60)
        time.sleep(1)
        subprocess.run([CLUSTER, "start-node", str(folder), "1"], check=True, capture_output=True, timeout=300)
        observations["restarted"] = True

    # Half the writes to each api (4 clients each, paced), the node stopped after 300; past
    # 350 each waits for the stop.
    results = {}

    def load(i):
        results[i] = run_load(processes[2 + i].url, items[i::2], all_dates, threads=4, pause=0.1,
                              on_progress=lambda n: progress.__setitem__(i, n),
                              hold=(350, lambda: "accepted_at_stop" in observations or "bounce_ended" in observations))
    loaders = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in loaders:
        t.start()
    wait_until("300 accepted", lambda: sum(progress.values()) >= 300, timeout=120)
    try:
        bounce()
    finally:
        observations["bounce_ended"] = True  # a failed bounce releases the held load
    for t in loaders:
        t.join()
    print(f"cluster on postgresql: {observations}")
    assert observations.get("restarted") and observations["accepted_at_stop"] < symbols * days, observations
    accepted = results[0][0] + results[1][0]
    statuses = results[0][1] + results[1][1]
    assert len(accepted) == symbols * days, {s: statuses.count(s) for s in set(statuses)}
    # Every write in the views through either api, each applied once (the inbox has one row
    # per event; a second application would be refused there), the outbox drained.
    check_returns(processes[3].url, symbols, days, all_dates)
    assert sql(url, "SELECT count(*) FROM returns.prices") == str(symbols * days)
    wait_until("inbox complete", lambda: sql(url, "SELECT count(*) FROM returns.inbox") == str(symbols * days),
               timeout=120)
    wait_until("outbox drained", lambda: sql(url, "SELECT count(*) FROM returns.outbox") == "0", timeout=60)
    # One returns_calculated per write: a second application would raise another, with an
    # event id of its own (a message published twice keeps its id and counts once).
    key = "returns.events.returns_calculated"
    wait_until("every returns_calculated", lambda: counter.pump() and len(counter.by_key(key)) >= symbols * days,
               timeout=120)
    time.sleep(1)
    counter.pump()
    calculated = list(counter.by_key(key).values())
    counter.close()
    assert len(calculated) == symbols * days and len(set(calculated)) == symbols * days
    for process in processes:
        assert requests.get(process.url + "/readyz", timeout=5).status_code == 200
    assert set(stack.stop().values()) == {0}
