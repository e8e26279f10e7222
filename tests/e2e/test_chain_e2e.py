"""The whole chain with the four binaries: prices → returns → correlations, checked
against numpy, with the operation id carried to correlations_updated — on SQLite files and
on PostgreSQL."""
import json
import subprocess
import uuid

import numpy as np
import requests

from conftest import publish_unhandleable_returns, wait_until

SYMBOLS = ["AAA", "BBB", "CCC", "FLAT"]


def series(n=80):
    rng = np.random.default_rng(3)
    common = rng.normal(0, 0.01, n)
    out = {}
    for k, s in enumerate(SYMBOLS):
        if s == "FLAT":
            out[s] = np.full(n, 50.0)
        else:
            r = 0.6 * common + rng.normal(0, 0.01, n) * (k + 1)
            out[s] = np.round(100 * np.cumprod(1 + r), 4)
    return out


def test_prices_to_returns_to_correlations(store_env, stack_factory, seed_consumer):
    stack = stack_factory(extra_env=store_env)
    watcher = seed_consumer(stack.exchange, ["correlations.events.correlations_updated"])
    stack.start("returns-worker")
    stack.start("correlations-worker")
    boundary = stack.start("boundary")
    returns_api = stack.start("returns-api")
    correlations_api = stack.start("correlations-api")

    n = 80
    dates = [f"2024-{1 + i // 28:02d}-{1 + i % 28:02d}" for i in range(n)]
    closes = series(n)
    # A gap: BBB has no price on one date, so its returns and the common dates differ.
    gap = 40
    body = {"prices": {s: [{"date": d, "close": float(c)} for i, (d, c) in enumerate(zip(dates, closes[s]))
                           if not (s == "BBB" and i == gap)] for s in SYMBOLS}}
    r = requests.post(returns_api.url + "/prices", json=body, timeout=10)
    assert r.status_code == 202, r.text
    op = r.json()["operation_id"]
    # An SSE subscriber from the start (curl, as a client would): retried until the boundary
    # has seen the operation's first event (404 before).
    def sse():
        out = subprocess.run(["curl", "-sN", "--max-time", "30", "-w", "\n%{http_code}",
                              f"{boundary.url}/operations/{op}/events"], capture_output=True, text=True)
        body, _, code = out.stdout.rpartition("\n")
        return code == "200" and body
    live_stream = wait_until("SSE stream", sse, timeout=40)

    # One correlations_updated per symbol, all under the operation id of the write.
    def updates():
        watcher.conn.process_data_events(time_limit=0.1)
        return [m for m in watcher.messages if m[1].correlation_id == op]
    wait_until("4 correlations_updated", lambda: len(updates()) == 4, timeout=30)
    payloads = [m[2] for m in updates()]
    assert sorted(p["symbols"][0] for p in payloads) == SYMBOLS
    assert all(p["windows"] == [20, 60, 252] for p in payloads)

    # The boundary resolved the operation: 4 prices_recorded, 4 returns_calculated, 4 updates.
    def operation():
        r = requests.get(f"{boundary.url}/operations/{op}", timeout=5)
        return r.status_code == 200 and r.json()["status"] == "succeeded" and r.json()
    resolved = wait_until("operation succeeded", operation, timeout=30)
    keys = [e["routing_key"] for e in resolved["events"]]
    assert keys.count("returns.events.prices_recorded") == 4
    assert keys.count("correlations.events.correlations_updated") == 4
    assert all(e["correlation_id"] == op and e["timestamp"].endswith("Z") for e in resolved["events"])
    assert requests.get(f"{boundary.url}/operations/{uuid.uuid4()}", timeout=5).status_code == 404
    # The stream: one SSE event per message, the same objects as /operations, then the outcome.
    for stream_text in (live_stream, wait_until("late SSE", sse)):
        blocks = [b for b in stream_text.strip().split("\n\n") if b]
        parsed = [(b.split("\n")[0].removeprefix("event: "), json.loads(b.split("\n")[1].removeprefix("data: ")))
                  for b in blocks]
        assert parsed[-1] == ("operation", {"operation_id": op, "status": "succeeded"})
        assert [name for name, _ in parsed[:-1]] == keys
        assert [data for _, data in parsed[:-1]] == resolved["events"]
    assert requests.get(f"{boundary.url}/operations/not-a-uuid", timeout=5).json()["error"]["code"] == "invalid_operation_id"

    # The matrix, against numpy on the latest 20 and 60 common returns.
    def returns_of(s):
        idx = [i for i in range(n) if not (s == "BBB" and i == gap)]
        c = closes[s][idx]
        return {dates[i]: v for i, v in zip(idx[1:], c[1:] / c[:-1] - 1)}
    rets = {s: returns_of(s) for s in SYMBOLS}
    for window in (20, 60):
        m = requests.get(f"{correlations_api.url}/correlations", params={"symbols": ",".join(SYMBOLS), "window": window},
                         timeout=10).json()
        assert m["symbols"] == SYMBOLS and m["window"] == window
        assert m["as_of"] == dates[-1]
        for i, a in enumerate(SYMBOLS):
            for j, b in enumerate(SYMBOLS):
                got = m["matrix"][i][j]
                if "FLAT" in (a, b):
                    assert got is None, (a, b)  # zero variance: null, not NaN
                    continue
                common = sorted(set(rets[a]) & set(rets[b]))[-window:]
                x = np.array([rets[a][d] for d in common])
                y = np.array([rets[b][d] for d in common])
                expected = np.corrcoef(x, y)[0, 1]
                assert abs(got - expected) <= 1e-9 * abs(expected), (a, b, window, got, expected)
        pair = requests.get(f"{correlations_api.url}/correlations/AAA/BBB", params={"window": window}, timeout=10).json()
        assert pair["observations"] == window
        assert pair["value"] == m["matrix"][0][1]
    # 252 needs more history: every cell is null.
    wide = requests.get(f"{correlations_api.url}/correlations", params={"symbols": "AAA,BBB", "window": 252}, timeout=10).json()
    assert wide["matrix"] == [[None, None], [None, None]]

    # A new window: 202, backfilled, resolved by its own correlations_updated.
    r = requests.post(correlations_api.url + "/windows", json={"window": 10}, timeout=10)
    assert r.status_code == 202
    window_op = r.json()["operation_id"]
    wait_until("backfill", lambda: any(m[1].correlation_id == window_op for m in updates_all(watcher)), timeout=30)
    backfill = [m[2] for m in watcher.messages if m[1].correlation_id == window_op][0]
    assert backfill["windows"] == [10] and backfill["pairs"] == 6 and backfill["symbols"] == SYMBOLS
    assert requests.get(f"{correlations_api.url}/correlations", params={"symbols": "AAA", "window": 10},
                        timeout=10).json()["matrix"] == [[1.0]]

    # Errors, exactly as the contract says.
    cases = [
        ({"symbols": "AAA", "window": "abc"}, 400, "invalid_query"),
        ({"window": "20"}, 400, "invalid_query"),
        ({"symbols": "AAA", "window": "30"}, 404, "unknown_window"),
        ({"symbols": "AAA,ZZZ", "window": "20"}, 404, "unknown_symbol"),
    ]
    for params, status, code in cases:
        r = requests.get(f"{correlations_api.url}/correlations", params=params, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), params
    for body, status, code in [({"window": 60.5}, 400, "invalid_body"), ({"window": "60"}, 400, "invalid_body"),
                               ({"window": 1}, 422, "invalid_window")]:
        r = requests.post(correlations_api.url + "/windows", json=body, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), body

    # The summary of a symbol, against numpy.
    s = requests.get(f"{returns_api.url}/returns/AAA/summary", timeout=10).json()
    c = closes["AAA"]
    r = c[1:] / c[:-1] - 1
    assert s["count"] == n - 1 and s["first_date"] == dates[0] and s["last_date"] == dates[-1]
    np.testing.assert_allclose(s["mean"], r.mean(), rtol=1e-9)
    np.testing.assert_allclose(s["volatility"], r.std(ddof=1) * np.sqrt(252), rtol=1e-9)
    np.testing.assert_allclose(s["cumulative_return"], np.prod(1 + r) - 1, rtol=1e-9)
    np.testing.assert_allclose(s["max_drawdown"], (c / np.maximum.accumulate(c) - 1).min(), rtol=1e-9)
    codes = stack.stop()
    assert set(codes.values()) == {0}, codes


def updates_all(watcher):
    watcher.conn.process_data_events(time_limit=0.1)
    return watcher.messages


def test_live_sse_stream_ends_with_timed_out_when_no_outcome_comes(stack_factory):
    # No correlations-worker: window_added is seen, correlations_updated never comes.
    stack = stack_factory(extra_env={"STEGA_OPERATION_TIMEOUT_S": "3"})
    boundary = stack.start("boundary")
    api = stack.start("correlations-api")
    op = requests.post(api.url + "/windows", json={"window": 30}, timeout=10).json()["operation_id"]
    wait_until("operation seen", lambda: requests.get(f"{boundary.url}/operations/{op}", timeout=5).status_code == 200)
    started = __import__("time").monotonic()
    out = subprocess.run(["curl", "-sN", "--max-time", "20", f"{boundary.url}/operations/{op}/events"],
                         capture_output=True, text=True).stdout
    waited = __import__("time").monotonic() - started
    blocks = [b for b in out.strip().split("\n\n") if b]
    assert blocks[0].startswith("event: correlations.events.window_added\ndata: ")
    assert blocks[-1] == 'event: operation\ndata: {"operation_id":"%s","status":"timed_out"}' % op
    assert 1 < waited < 10, waited  # the stream stayed open until the deadline, then ended
    assert requests.get(f"{boundary.url}/operations/{op}", timeout=5).json()["status"] == "timed_out"
    assert stack.stop() == {"boundary": 0, "correlations-api": 0}


def test_an_event_that_fails_for_good_fails_its_operation(stack_factory, amqp_url):
    # A returns_calculated that can never be handled (a date that does not exist): the
    # correlations-worker dead-letters it and raises operation_failed; the boundary says failed.
    stack = stack_factory()
    boundary = stack.start("boundary")
    stack.start("correlations-worker")
    op = str(uuid.uuid4())
    publish_unhandleable_returns(amqp_url, stack.exchange, op)

    def failed():
        r = requests.get(f"{boundary.url}/operations/{op}", timeout=5)
        return r.status_code == 200 and r.json()["status"] == "failed" and r.json()
    operation = wait_until("operation failed", failed, timeout=20)
    failure = [e for e in operation["events"] if e["routing_key"] == "correlations.events.operation_failed"][0]
    assert failure["payload"]["operation_id"] == op
    assert failure["payload"]["service"] == "correlations"
    assert "undecodable" in failure["payload"]["reason"]
    assert set(stack.stop().values()) == {0}
