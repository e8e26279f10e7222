"""What a client or a broker message can send must not crash a process or stall it for
others (DESIGN.md, "Limits on untrusted input"), and processes must start together safely.
Each test reproduces a defect seen against the real binaries."""
import asyncio
import json
import os
import socket
import struct
import subprocess
import time
import uuid

import pika
import pytest
import requests
import websockets

from conftest import BIN, Process, free_port, wait_until
from test_websocket_e2e import frame, raw_connect


def publish(amqp_url, exchange, routing_key, body, **properties):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
        properties.setdefault("message_id", str(uuid.uuid4()))
        channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(**properties))
    finally:
        conn.close()


def get_one(amqp_url, queue, timeout=15):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method:
                return properties, body
            time.sleep(0.1)
    finally:
        conn.close()
    raise AssertionError(f"nothing arrived in {queue}")


@pytest.mark.parametrize("service", ["returns", "correlations"])
def test_api_and_worker_replicas_start_together_on_a_fresh_directory(stack_factory, tmp_path, service):
    """Four processes of one service at the same instant on a new data directory, 20 times:
    each must become ready (before the migration lock one of them often exited 1 with
    'UNIQUE constraint failed: grdb_migrations.identifier')."""
    stack = stack_factory()
    names = [f"{service}-api", f"{service}-worker", f"{service}-api", f"{service}-worker"]
    for round in range(20):
        data = tmp_path / f"data-{round}"
        procs = []
        for i, name in enumerate(names):
            env = dict(stack.env, STEGA_DATA_DIR=str(data), STEGA_HTTP_PORT=str(free_port()))
            procs.append(Process(name, env, tmp_path, alias=f"{name}-{round}-{i}"))
        try:
            for p in procs:
                p.ready(timeout=30)
        finally:
            for p in procs:
                p.terminate()
                p.kill()


def test_a_pathological_pattern_is_refused_and_does_not_delay_another_client(stack_factory):
    stack = stack_factory()
    stack.start("returns-worker")
    boundary = stack.start("boundary")
    api = stack.start("returns-api")
    ws_url = boundary.url.replace("http://", "ws://") + "/ws"

    async def scenario():
        async with websockets.connect(ws_url) as attacker, websockets.connect(ws_url) as watcher:
            # The pattern of the report: 3,000 '#' words, then x.
            await attacker.send(json.dumps({"action": "subscribe", "pattern": ".".join(["#"] * 3000) + ".x"}))
            refused = json.loads(await attacker.recv())
            assert refused["type"] == "error" and "255" in refused["message"]
            # The worst patterns that fit, up to the subscription cap; one more is refused.
            worst = ".".join(["#"] * 127) + ".x"
            for i in range(1000):
                pattern = worst if i == 0 else ".".join(["#"] * 60) + f".w{i}"
                await attacker.send(json.dumps({"action": "subscribe", "pattern": pattern}))
            replies = [json.loads(await attacker.recv()) for _ in range(1000)]
            assert all(r["type"] == "subscribed" for r in replies)
            await attacker.send(json.dumps({"action": "subscribe", "pattern": "one.more"}))
            over = json.loads(await attacker.recv())
            assert over["type"] == "error" and "1000" in over["message"]
            await attacker.send(json.dumps({"action": "subscribe", "operation": str(uuid.uuid4())}))
            assert json.loads(await attacker.recv())["type"] == "error"

            await watcher.send(json.dumps({"action": "subscribe", "pattern": "#"}))
            assert json.loads(await watcher.recv())["type"] == "subscribed"
            start = time.monotonic()
            for day in range(2, 12):
                r = requests.post(api.url + "/prices", json={"symbol": "PAT", "prices": [
                    {"date": f"2024-01-{day:02d}", "close": 10.0 + day}]}, timeout=10)
                assert r.status_code == 202
            seen = 0
            while seen < 20:  # prices_recorded and returns_calculated of each write
                message = json.loads(await asyncio.wait_for(watcher.recv(), 10))
                seen += message["type"] == "event"
            return time.monotonic() - start

    took = asyncio.run(scenario())
    assert took < 10
    assert requests.get(boundary.url + "/readyz", timeout=5).status_code == 200


def test_a_poison_window_event_is_dead_lettered_and_the_worker_goes_on(stack_factory, amqp_url):
    stack = stack_factory()
    worker = stack.start("correlations-worker")
    publish(amqp_url, stack.exchange, "correlations.events.window_added", b'{"window":9223372036854775807}',
            correlation_id=str(uuid.uuid4()))
    properties, body = get_one(amqp_url, "correlations.events.dead")
    assert body == b'{"window":9223372036854775807}'
    assert "window must be 2...2520" in properties.headers["x-stega-error"]
    assert properties.headers["x-stega-attempts"] == 1
    assert worker.proc.poll() is None, worker.log_text()
    # A valid event after it is handled by the same process.
    publish(amqp_url, stack.exchange, "correlations.events.window_added", b'{"window":30}',
            correlation_id=str(uuid.uuid4()))
    wait_until("window 30 handled", lambda: "window backfilled" in worker.log_text() and "window=30" in worker.log_text())
    assert requests.get(worker.url + "/readyz", timeout=5).status_code == 200


def test_an_out_of_range_amqp_timestamp_does_not_kill_the_boundary(stack_factory, amqp_url):
    stack = stack_factory()
    boundary = stack.start("boundary")
    op = str(uuid.uuid4())
    body = json.dumps({"symbol": "TS", "first_date": "2024-01-02", "last_date": "2024-01-02", "count": 1}).encode()
    publish(amqp_url, stack.exchange, "returns.events.prices_recorded", body, correlation_id=op,
            timestamp=2**64 - 1)
    publish(amqp_url, stack.exchange, "returns.events.prices_recorded", body, correlation_id=op,
            timestamp=int(time.time()))
    status = wait_until("the sane event tracked",
                        lambda: requests.get(f"{boundary.url}/operations/{op}", timeout=5).json().get("events"))
    assert len(status) == 1 and status[0]["timestamp"].endswith("Z")
    assert boundary.proc.poll() is None, boundary.log_text()


def test_websocket_clients_are_capped_pinged_and_dropped_when_they_do_not_read(stack_factory):
    stack = stack_factory(extra_env={"STEGA_WS_MAX_CLIENTS": "3", "STEGA_WS_PING_INTERVAL_S": "1"})
    boundary = stack.start("boundary")
    ws_url = boundary.url.replace("http://", "ws://") + "/ws"

    async def cap_and_keepalive():
        clients = [await websockets.connect(ws_url) for _ in range(3)]
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.connect(ws_url)
        assert refused.value.response.status_code == 503
        # Clients that answer pings (the library does) stay past several intervals.
        await asyncio.sleep(3.5)
        for c in clients:
            await c.send(json.dumps({"action": "subscribe", "pattern": "#"}))
            assert json.loads(await c.recv())["type"] == "subscribed"
        await clients[0].close()
        await asyncio.sleep(0.3)
        again = await websockets.connect(ws_url)
        for c in clients[1:] + [again]:
            await c.close()

    asyncio.run(cap_and_keepalive())

    # A raw client that never answers pings is closed after two intervals.
    silent = raw_connect(boundary.url)
    silent.settimeout(10)
    start = time.monotonic()
    data = b""
    while True:
        chunk = silent.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"\x89\x00"), data[:8]  # a ping came first
    assert 1.5 < time.monotonic() - start < 8
    silent.close()

    # A client that sends pings and never reads: its pongs fill its queue, it is dropped
    # within seconds, and the boundary still answers.
    flooder = raw_connect(boundary.url)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = frame(0x9, b"p" * 125)
    start = time.monotonic()
    dropped = False
    while time.monotonic() - start < 20:
        try:
            flooder.sendall(ping * 64)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
            break
    assert dropped, "a client that never reads its pongs kept its connection"
    flooder.close()
    assert requests.get(boundary.url + "/readyz", timeout=5).status_code == 200


def test_closes_that_could_give_a_non_finite_return_are_refused(stack_factory):
    """The report: 1e-300 then 1e300 were accepted, the return was infinite, the summary
    answered 500 for good. Closes must now lie in 1e-150...1e150, where every ratio is finite."""
    stack = stack_factory()
    api = stack.start("returns-api")
    stack.start("returns-worker")
    for close in (1e-300, 1e300, 1e-151, 2e150):
        r = requests.post(api.url + "/prices", json={"symbol": "INF", "prices": [{"date": "2024-01-02", "close": close}]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_price", r.text
    assert requests.get(api.url + "/prices/INF").status_code == 404
    # The ends of the range side by side: stored, their returns finite, and the summary
    # answers (the volatility squares a return of 1e300: null, not an error).
    op = None
    for date, close in [("2024-01-02", 1e-150), ("2024-01-03", 1e150), ("2024-01-04", 1e-150)]:
        r = requests.post(api.url + "/prices", json={"symbol": "FAR", "prices": [{"date": date, "close": close}]})
        assert r.status_code == 202, r.text
    wait_until("both returns", lambda: len(requests.get(api.url + "/returns/FAR").json().get("returns", [])) == 2)
    values = [r["value"] for r in requests.get(api.url + "/returns/FAR").json()["returns"]]
    assert values[0] > 1e299 and values[1] == -1.0
    logs = [r["value"] for r in requests.get(api.url + "/returns/FAR?kind=log").json()["returns"]]
    assert abs(logs[0] - 690.7755278982137) < 1e-9 and abs(logs[1] + 690.7755278982137) < 1e-9
    summary = requests.get(api.url + "/returns/FAR/summary")
    assert summary.status_code == 200, summary.text
    assert summary.json()["volatility"] is None and summary.json()["count"] == 2


def test_a_refused_upload_is_answered_before_its_body(stack_factory):
    stack = stack_factory(extra_env={"STEGA_API_TOKEN": "t0ken"})
    api = stack.start("returns-api")
    s = socket.create_connection(("127.0.0.1", api.port), timeout=5)
    s.sendall(b"POST /prices HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 8000000\r\n\r\n{")
    assert s.recv(4096).startswith(b"HTTP/1.1 401")
    s.close()


def test_a_token_file_with_no_token_refuses_to_start(stack_factory, tmp_path):
    stack = stack_factory()
    empty = tmp_path / "api_token"
    empty.write_text(" \n\t\n")
    env = dict(stack.env, STEGA_HTTP_PORT=str(free_port()), STEGA_API_TOKEN_FILE=str(empty))
    result = subprocess.run([str(BIN / "returns-api")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "STEGA_API_TOKEN_FILE" in result.stderr
    # The positive control: the same start with a token in the file serves, and guards writes.
    good = tmp_path / "good_token"
    good.write_text("s3cret\n")
    api = Process("returns-api", dict(env, STEGA_API_TOKEN_FILE=str(good)), tmp_path, alias="returns-api-good")
    stack.processes["returns-api-good"] = api
    api.ready()
    body = {"symbol": "TOKF", "prices": [{"date": "2024-01-02", "close": 1.0}]}
    assert requests.post(api.url + "/prices", json=body, timeout=5).status_code == 401
    assert requests.post(api.url + "/prices", json=body, headers={"Authorization": "Bearer s3cret"},
                         timeout=5).status_code == 202
