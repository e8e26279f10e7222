"""Fault tests with real processes and the test's own broker: broker restart under load,
a worker SIGKILLed mid-stream, poison messages, competing workers, SIGTERM under load.
Every accepted write (202) must reach the read views exactly once."""
import concurrent.futures as futures
import datetime as dt
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import uuid

import numpy as np
import pika
import requests

from conftest import BIN, ROOT, rabbitmqctl, wait_until

BROKER_DIR = os.environ.get("STEGA_TEST_BROKER_DIR", "")


def broker(action):
    args = [str(ROOT / "scripts/broker.sh"), action, BROKER_DIR]
    if action == "start":
        args.append(pathlib.Path(BROKER_DIR, "port").read_text().strip())
    subprocess.run(args, check=True, capture_output=True, timeout=180)


def dates(n, start=dt.date(2023, 1, 2)):
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n)]


def close_for(symbol_index, day_index):
    # A deterministic, symbol-specific price path.
    return round(100.0 + 10 * np.sin(day_index / 7.0 + symbol_index) + day_index * 0.05 * (symbol_index + 1), 4)


def writes(symbols, days):
    """One POST per (symbol, date), in an order that interleaves symbols and shuffles dates."""
    rng = np.random.default_rng(7)
    items = [(s, d) for d in range(days) for s in range(symbols)]
    rng.shuffle(items)
    return items


def post_one(session, api_url, symbol_index, day_index, all_dates):
    body = {"symbol": f"S{symbol_index}", "prices": [{"date": all_dates[day_index],
                                                      "close": close_for(symbol_index, day_index)}]}
    try:
        r = session.post(api_url + "/prices", json=body, timeout=10)
        return r.status_code
    except requests.RequestException:
        return None


def run_load(api_url, items, all_dates, threads=8, on_progress=None, pause=0.0, hold=None):
    """POSTs every item from `threads` concurrent clients, each waiting `pause` seconds
    between requests; returns the accepted ones and every status. `hold`, `(count, ready)`:
    once `count` writes are accepted, each client waits (3 minutes at most) until `ready()`
    before its next request — so a disruption that is slow to take effect on a loaded
    machine still falls in the middle of the load, not after it."""
    accepted, lock = [], threading.Lock()
    local = threading.local()

    def work(item):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        if hold and len(accepted) >= hold[0]:
            deadline = time.monotonic() + 180
            while not hold[1]() and time.monotonic() < deadline:
                time.sleep(0.05)
        status = post_one(local.session, api_url, item[0], item[1], all_dates)
        time.sleep(pause)
        if status == 202:
            with lock:
                accepted.append(item)
                if on_progress:
                    on_progress(len(accepted))
        return status

    with futures.ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(work, items))
    return accepted, statuses


def load_with_disruption(api_url, items, all_dates, after, disrupt, observations, hold=None, **load):
    """POSTs `items` (`run_load`, with `load`'s settings) while `disrupt()` runs on a thread of
    its own once `after` of them are accepted; the count so far is kept in
    `observations["accepted"]`. `hold`, `(count, ready)`: past `count` accepted the load waits
    for `ready()` (or for `disrupt` to end, whichever comes first). Returns what `run_load` does."""
    finished = threading.Event()

    def run():
        try:
            wait_until(f"{after} accepted", lambda: observations.get("accepted", 0) >= after, timeout=120)
            disrupt()
        finally:
            finished.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        return run_load(api_url, items, all_dates, on_progress=lambda n: observations.__setitem__("accepted", n),
                        hold=hold and (hold[0], lambda: finished.is_set() or hold[1]()), **load)
    finally:
        thread.join()


def db(stack):
    return sqlite3.connect(str(stack.tmp_path / "data" / "returns.sqlite"), timeout=30)


def check_returns(api_url, symbols, days, all_dates):
    """Every return of every symbol, equal to numpy's on the full series."""
    for s in range(symbols):
        def complete():
            r = requests.get(f"{api_url}/returns/S{s}", timeout=10)
            return r.status_code == 200 and len(r.json()["returns"]) == days - 1 and r.json()
        view = wait_until(f"returns of S{s}", complete, timeout=90)
        closes = np.array([close_for(s, d) for d in range(days)])
        np.testing.assert_allclose([x["value"] for x in view["returns"]], closes[1:] / closes[:-1] - 1, rtol=1e-9)
        assert [x["date"] for x in view["returns"]] == all_dates[1:days]


def check_views(stack, symbols, days, all_dates):
    """Every price once, every return equal to numpy's on the full series."""
    check_returns(stack.api.url, symbols, days, all_dates)
    with db(stack) as conn:
        assert conn.execute("SELECT COUNT(*) FROM prices").fetchone()[0] == symbols * days


def diagnostics(stack):
    with db(stack) as conn:
        outbox = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        inbox = conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
    queues = __import__("conftest").rabbitmqctl("list_queues", "name", "messages", "messages_unacknowledged")
    errors = [l for p in stack.processes.values() for l in p.log_text().splitlines()
              if " error " in l or " warning " in l][-20:]
    return f"outbox={outbox} inbox={inbox}\nqueues:\n{queues}\nlog:\n" + "\n".join(errors)


def nodes_connected(process):
    """The broker node of each connection the process opened, in order (its "publisher
    connected" and "consuming" log lines)."""
    return [re.search(r"amqp\.url=\S+@([^/\s]+)", line).group(1) for line in process.log_text().splitlines()
            if ("publisher connected" in line or ": consuming " in line) and "amqp.url=" in line]


def inbox_count(stack):
    with db(stack) as conn:
        return conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]


def test_a_broker_restart_in_the_middle_of_1000_posts_loses_nothing(stack_factory):
    stack = stack_factory(extra_env={"STEGA_RETRY_DELAY_MS": "100"})
    stack.start("returns-worker")
    api = stack.start("returns-api")
    symbols, days = 10, 100
    all_dates = dates(days)
    restarted = threading.Event()
    observations = {}

    def bounce():
        broker("stop")
        # Writes are still accepted, and readiness says the broker is gone.
        observations["readyz_down"] = wait_until(
            "readyz 503", lambda: requests.get(api.url + "/readyz", timeout=5).status_code == 503, timeout=30)
        time.sleep(1)
        observations["accepted_while_down"] = observations.get("accepted", 0)
        broker("start")
        observations["accepted_at_restart"] = observations.get("accepted", 0)
        restarted.set()

    # Paced at about 50 writes/s, so the load spans the broker's stop and start (~20 s).
    # Past 700 the load waits until the broker is down, however long its stop takes.
    accepted, statuses = load_with_disruption(api.url, writes(symbols, days), all_dates, 300, bounce, observations,
                                              pause=0.15, hold=(700, lambda: "accepted_while_down" in observations))
    assert restarted.is_set()
    assert observations["readyz_down"]
    # The broker was down while writes were still coming in.
    assert 300 <= observations["accepted_while_down"] < symbols * days, observations
    print(f"broker restart: stopped after 300 accepted, {observations['accepted_at_restart']} accepted by the restart")
    # Every write was accepted (the outbox does not need the broker).
    assert len(accepted) == symbols * days, {s: statuses.count(s) for s in set(statuses)}
    wait_until("api ready again", lambda: requests.get(api.url + "/readyz", timeout=5).status_code == 200, timeout=60)
    check_views(stack, symbols, days, all_dates)
    # One handled event per accepted write: the inbox holds each event id once.
    try:
        wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=60)
    except AssertionError:
        raise AssertionError(diagnostics(stack))
    assert stack.stop() == {"returns-worker": 0, "returns-api": 0}


def test_b_worker_sigkilled_mid_batch_loses_nothing_and_applies_nothing_twice(stack_factory, seed_consumer):
    # Batches of 64 out of a backlog of 1,200: the worker is killed once one batch has
    # committed, while the next ones are being handled (a transaction open, deliveries unacked).
    stack = stack_factory(extra_env={"STEGA_BATCH_SIZE": "64"})
    watcher = seed_consumer(stack.exchange, ["returns.events.returns_calculated"])
    # The worker declares its durable queue, then stops: the events queue up meanwhile.
    assert stack.start("returns-worker").terminate() == 0
    api = stack.start("returns-api")
    symbols, days = 5, 240
    all_dates = dates(days)
    accepted, _ = run_load(api.url, writes(symbols, days), all_dates)
    assert len(accepted) == symbols * days
    worker = stack.start("returns-worker")
    wait_until("a full batch handled", lambda: inbox_count(stack) >= 64, timeout=60, interval=0.002)
    worker.proc.kill()
    worker.proc.wait()
    handled_before = inbox_count(stack)
    assert handled_before < symbols * days, "the worker finished before it was killed"
    print(f"worker SIGKILLed after {handled_before} of {symbols * days} events")
    stack.start("returns-worker")
    check_views(stack, symbols, days, all_dates)
    wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=60)
    # Each prices_recorded produced exactly one returns_calculated event id (the relay
    # may publish one twice after a crash; consumers dedupe by event id).
    def all_seen():
        watcher.conn.process_data_events(time_limit=0.2)
        causes = {m[1].headers["causation_id"] for m in watcher.messages}
        return len(causes) == symbols * days
    wait_until("a returns_calculated per prices_recorded", all_seen, timeout=60)
    by_cause = {}
    for method, props, body in watcher.messages:
        by_cause.setdefault(props.headers["causation_id"], set()).add(props.message_id)
    assert all(len(ids) == 1 for ids in by_cause.values()), "an event was applied twice"


def test_c_poison_messages_land_in_the_dead_letter_queue_and_valid_events_keep_flowing(stack_factory, amqp_url):
    stack = stack_factory(extra_env={"STEGA_RETRY_DELAY_MS": "50"})
    stack.start("returns-worker")
    api = stack.start("returns-api")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare(exchange=stack.exchange, exchange_type="direct", durable=True)
    ch.queue_purge("returns.events.dead")  # the queue is the service's, shared with earlier tests
    key = "returns.events.prices_recorded"
    poison = [
        (key, b"not json at all", pika.BasicProperties(message_id=str(uuid.uuid4()), type="prices_recorded")),
        (key, b'{"symbol": 42}', pika.BasicProperties(message_id=str(uuid.uuid4()), type="prices_recorded")),
        (key, b'{"symbol":"AAPL","first_date":"2024-01-02","last_date":"2024-01-02","count":1}',
         pika.BasicProperties()),  # no message_id: not an event envelope
    ]
    for routing_key, body, props in poison:
        ch.basic_publish(exchange=stack.exchange, routing_key=routing_key, body=body, properties=props)
    # An unknown type, straight into the service's queue.
    ch.basic_publish(exchange="", routing_key="returns.events", body=b"{}",
                     properties=pika.BasicProperties(message_id=str(uuid.uuid4()), type="mystery"))

    response = requests.post(api.url + "/prices", json={"symbol": "OK", "prices": [
        {"date": "2024-01-02", "close": 10.0}, {"date": "2024-01-03", "close": 11.0}]}, timeout=5)
    assert response.status_code == 202
    wait_until("valid event handled", lambda: requests.get(api.url + "/returns/OK", timeout=5).status_code == 200
               and len(requests.get(api.url + "/returns/OK", timeout=5).json()["returns"]) == 1)

    def dead():
        return ch.queue_declare(queue="returns.events.dead", durable=True, passive=True).method.message_count
    wait_until("4 dead letters", lambda: dead() == 4, timeout=30)
    seen = []
    for _ in range(4):
        method, props, body = ch.basic_get("returns.events.dead", auto_ack=False)
        seen.append((props.headers or {}, body))
        ch.basic_nack(method.delivery_tag, requeue=True)
    for headers, body in seen:
        assert headers["x-stega-error"], headers
        assert headers["x-stega-attempts"] == 1
        assert headers["x-stega-routing-key"] in (key, "returns.events")
    conn.close()

    # The documented command moves them back; still poison, they are dead-lettered again.
    out = subprocess.run([str(BIN / "returns-worker"), "replay-dead-letters"], env=stack.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "moved 4" in out.stdout
    wait_until("dead again", lambda: dead_count(amqp_url) == 4, timeout=30)
    assert requests.get(stack.worker.url + "/readyz", timeout=5).status_code == 200


def test_c2_a_poison_event_in_the_middle_of_a_batch_is_dead_lettered_alone(stack_factory, amqp_url):
    stack = stack_factory()
    assert stack.start("returns-worker").terminate() == 0
    api = stack.start("returns-api")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_purge("returns.events.dead")  # the queue is the service's, shared with earlier tests
    symbols, days = 4, 50
    all_dates = dates(days)
    items = writes(symbols, days)
    # Half the writes, the poison (an envelope whose payload breaks the event's rules), the rest:
    # the worker finds it in the middle of one batch.
    accepted, _ = run_load(api.url, items[:100], all_dates)
    wait_until("the outbox published", lambda: requests.get(api.url + "/metrics", timeout=5).text.count("outbox_depth 0") == 1,
               timeout=30)
    poison_id = str(uuid.uuid4())
    ch.basic_publish(exchange=stack.exchange, routing_key="returns.events.prices_recorded",
                     body=b'{"symbol":"BAD","first_date":"2024-01-05","last_date":"2024-01-02","count":1}',
                     properties=pika.BasicProperties(message_id=poison_id, type="prices_recorded",
                                                     content_type="application/json", delivery_mode=2))
    more, _ = run_load(api.url, items[100:], all_dates)
    assert len(accepted) + len(more) == symbols * days
    stack.start("returns-worker")
    check_views(stack, symbols, days, all_dates)
    wait_until("one dead letter", lambda: dead_count(amqp_url) == 1, timeout=30)
    method, props, body = ch.basic_get("returns.events.dead", auto_ack=True)
    assert props.message_id == poison_id and props.headers["x-stega-attempts"] == 1, props
    # Every valid event applied once; the poison not at all.
    wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=30)
    with db(stack) as c:
        assert c.execute("SELECT COUNT(*) FROM inbox WHERE event_id = ?", (poison_id,)).fetchone()[0] == 0
    # The backlog was handled in batches (each handled event logs the size of its batch).
    sizes = [int(n) for n in re.findall(r"batch\.size=(\d+)", stack.worker.log_text())]
    assert sizes and max(sizes) > 1, sizes
    conn.close()


def dead_count(amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return conn.channel().queue_declare(queue="returns.events.dead", durable=True, passive=True).method.message_count
    finally:
        conn.close()


def test_d_two_workers_on_one_queue_handle_every_event_once_in_total(stack_factory):
    stack = stack_factory(extra_env={"STEGA_PREFETCH": "1"})
    first = stack.start("returns-worker")
    second = stack.start("returns-worker", alias="returns-worker-2")
    api = stack.start("returns-api")
    symbols, days = 6, 50
    all_dates = dates(days)
    accepted, _ = run_load(api.url, writes(symbols, days), all_dates)
    assert len(accepted) == symbols * days
    check_views(stack, symbols, days, all_dates)
    wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=60)

    def handled(process):
        return [json_id(line) for line in process.log_text().splitlines() if "event handled" in line]
    ids_first, ids_second = handled(first), handled(second)
    assert len(ids_first) + len(ids_second) == symbols * days
    assert len(set(ids_first) | set(ids_second)) == symbols * days
    assert ids_first and ids_second, "one worker did all the work: not competing consumers"
    codes = stack.stop()
    assert set(codes.values()) == {0}, codes


def json_id(line):
    return line.split("bus.event_id=")[1].split()[0]


def test_e_sigterm_during_load_exits_0_within_10s_and_loses_nothing_accepted(stack_factory):
    stack = stack_factory()
    stack.start("returns-worker")
    api = stack.start("returns-api")
    symbols, days = 4, 150
    all_dates = dates(days)
    state = {}

    def stop_midway():
        started = time.monotonic()
        for process in (stack.api, stack.worker):
            process.proc.send_signal(signal.SIGTERM)
        state["codes"] = [p.proc.wait(10) for p in (stack.api, stack.worker)]
        state["seconds"] = time.monotonic() - started

    accepted, _ = load_with_disruption(api.url, writes(symbols, days), all_dates, 200, stop_midway, state,
                                       threads=4, pause=0.01, hold=(450, lambda: "codes" in state))
    assert state["codes"] == [0, 0], state
    assert state["seconds"] < 10, state
    assert 200 <= len(accepted) < symbols * days, len(accepted)

    # Restart both: every accepted write is there, and its returns are computed.
    stack.start("returns-worker")
    api = stack.start("returns-api")
    with db(stack) as conn:
        stored = set(conn.execute("SELECT symbol, date FROM prices").fetchall())
    expected = {(f"S{s}", all_dates[d]) for s, d in accepted}
    assert expected <= stored, f"{len(expected - stored)} accepted writes are missing"
    wait_until("every accepted write handled", lambda: inbox_count(stack) == len(stored), timeout=60)
    assert stack.stop() == {"returns-worker": 0, "returns-api": 0}


def test_f_a_list_of_broker_nodes_first_that_answers_then_the_next_when_dropped(stack_factory, amqp_url):
    """STEGA_AMQP_URL with three nodes: one where nothing listens, then the test broker under
    two names. The processes connect to the first that answers; when the broker closes their
    connections in the middle of 300 writes, they connect to the node after theirs. Every
    accepted write reaches the views once."""
    parsed = urllib.parse.urlsplit(amqp_url)
    dead = parsed._replace(netloc=f"{parsed.username}:{parsed.password}@127.0.0.1:1").geturl()
    first = parsed._replace(netloc=f"{parsed.username}:{parsed.password}@127.0.0.1:{parsed.port}").geturl()
    second = parsed._replace(netloc=f"{parsed.username}:{parsed.password}@localhost:{parsed.port}").geturl()
    stack = stack_factory(extra_env={"STEGA_AMQP_URL": f"{dead},{first},{second}"})
    worker = stack.start("returns-worker")
    api = stack.start("returns-api")

    assert set(nodes_connected(worker)) == {f"127.0.0.1:{parsed.port}"} and len(nodes_connected(worker)) == 2, worker.log_text()
    assert nodes_connected(api) == [f"127.0.0.1:{parsed.port}"], api.log_text()
    symbols, days = 6, 50
    all_dates = dates(days)
    observations = {}

    def drop():
        for line in rabbitmqctl("list_connections", "pid", "peer_host").splitlines():
            pid, _, host = line.partition("\t")
            if host.strip() in ("127.0.0.1", "::1", "::ffff:127.0.0.1") and pid.startswith("<"):
                rabbitmqctl("close_connection", pid, "failover test")
        observations["dropped"] = True

    accepted, statuses = load_with_disruption(api.url, writes(symbols, days), all_dates, 100, drop, observations,
                                              pause=0.05)
    assert observations.get("dropped")
    assert len(accepted) == symbols * days, {s: statuses.count(s) for s in set(statuses)}
    # Each process reconnected, to the node after the one it had (the same broker, by its other name).
    for process in (worker, api):
        wait_until(f"{process.name} on the next node",
                   lambda: nodes_connected(process)[-1] == f"localhost:{parsed.port}", timeout=30)
    check_views(stack, symbols, days, all_dates)
    wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=60)
    assert stack.stop() == {"returns-worker": 0, "returns-api": 0}


def test_g_quorum_queues_carry_the_chain_and_a_poison_event_is_dead_lettered(stack_factory, amqp_url):
    """STEGA_QUEUE_TYPE=quorum: the worker declares its queues as quorum queues on the
    installed RabbitMQ; writes reach the views once and a poison event is dead-lettered.
    With the seed's transient mode the setting is refused at start."""

    def delete_returns_queues():
        # A queue keeps its type: those earlier tests left (classic) go first, and these
        # (quorum) go after, for the tests that follow; events.unroutable, which every
        # publisher declares, too.
        names = [line.split("\t")[0] for line in rabbitmqctl("list_queues", "name").splitlines()]
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = conn.channel()
            for name in names:
                if name.startswith("returns.events") or name == "events.unroutable":
                    channel.queue_delete(queue=name)
        finally:
            conn.close()

    delete_returns_queues()
    try:
        quorum_chain(stack_factory, amqp_url)
    finally:
        delete_returns_queues()


def quorum_chain(stack_factory, amqp_url):
    stack = stack_factory(extra_env={"STEGA_QUEUE_TYPE": "quorum", "STEGA_RETRY_DELAY_MS": "100"})
    stack.start("returns-worker")
    api = stack.start("returns-api")
    types = dict(line.split("\t")[:2] for line in rabbitmqctl("list_queues", "name", "type").splitlines() if "\t" in line)
    assert types.get("returns.events") == "quorum" and types.get("returns.events.dead") == "quorum", types
    symbols, days = 4, 30
    all_dates = dates(days)
    accepted, statuses = run_load(api.url, writes(symbols, days), all_dates)
    assert len(accepted) == symbols * days, {s: statuses.count(s) for s in set(statuses)}
    check_views(stack, symbols, days, all_dates)
    wait_until("inbox complete", lambda: inbox_count(stack) == symbols * days, timeout=60)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.basic_publish(stack.exchange, "returns.events.prices_recorded", b"{not json",
                              pika.BasicProperties(message_id=str(uuid.uuid4()), type="prices_recorded",
                                                   app_id="returns", delivery_mode=2))
        wait_until("poison dead-lettered", lambda: channel.queue_declare(
            "returns.events.dead", passive=True).method.message_count == 1, timeout=30)
    finally:
        conn.close()
    assert stack.stop() == {"returns-worker": 0, "returns-api": 0}
    bad = subprocess.run([str(BIN / "returns-worker")], env=dict(stack.env, STEGA_QUEUE_MODE="transient",
                                                               STEGA_HTTP_PORT="0"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "STEGA_QUEUE_TYPE=quorum needs STEGA_QUEUE_MODE=durable" in bad.stderr, bad.stderr
