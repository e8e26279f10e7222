"""The worker scenarios of `make bench`: the real workers with their real handlers, each
beside its baseline in the same run.

  drain       returns-worker draining a backlog of 5,000 and 50,000 single-price writes (made
              through returns-api while the worker is stopped), vs the raw C consumer
              (bench/baseline/consumer.c: prefetch 100, manual ack) on as many messages; and
              correlations-worker, its projection holding 500 symbols x 300 days, draining
              5,000 and 50,000 `returns_calculated` of one new return each (published with
              pika while it is stopped). Rates from the first delivery to the last event
              handled; peak RSS (VmHWM) of the worker.
  burst       returns-api + returns-worker under the 10 s durable wrk burst: the time until
              the api's outbox is empty and until the worker has applied every accepted write;
              then the latency at 200 req/s right after such a burst (the same processes, the
              worker possibly still behind), beside the latency of an idle pipeline.
  backfill    correlations-worker holding 500 symbols x 10 years of returns: POST /windows
              for a new window -> its `correlations_updated` (every pair of the window,
              computed and written), vs numpy's corrcoef over the same aligned returns plus
              writing its matrix to SQLite (one row per symbol); the stored matrix compared
              to numpy's. GET /correlations for 100 and 500 symbols (median of 15).
"""
import datetime as dt
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid

import numpy as np
import pika
import requests

from messaging import BASELINES, BIN, Proc, free_port, latency, metric, service_env

HANDLED = "handler_duration_seconds_count"  # one per event handled (acked or failed)
CONSUMED = "events_consumed_total"  # one per delivery received


def peak_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Settings every process of the drain scenarios gets besides its own (the PostgreSQL
# scenario sets STEGA_DATABASE_URL here).
EXTRA_ENV = {}


def start(name, broker, data, port, wait=True):
    """A durable-mode process of the project on `port`, ready (unless `wait` is off)."""
    return Proc([str(BIN / name)], env=service_env(broker, data, "durable", port, **EXTRA_ENV),
                ready_url=f"http://127.0.0.1:{port}/readyz" if wait else None)


def timed_drain(url, count, timeout=600):
    """Polls the worker from its start: events per second from the first delivery to the
    `count`-th event handled."""
    first = None
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            consumed, handled = metric(url, CONSUMED), metric(url, HANDLED)
        except requests.ConnectionError:  # not listening yet
            time.sleep(0.005)
            continue
        now = time.perf_counter()
        if first is None and consumed > 0:
            first = now
        if handled >= count:
            return count / (now - first)
        time.sleep(0.005)
    raise AssertionError(f"{url}: {count} events not handled in {timeout} s")


def raw_c(broker, count):
    """The raw C consumer (prefetch 100, manual ack) on `count` persistent messages."""
    broker.reset_queue("bench.raw", "bench.events.raw")
    subprocess.run([str(BASELINES / "fill"), "--amqp-port", str(broker.port), "--exchange", "events",
                    "--routing-key", "bench.events.raw", "--count", str(count), "--persistent"], check=True)
    out = subprocess.run([str(BASELINES / "consumer"), "--amqp-port", str(broker.port), "--queue", "bench.raw",
                          "--count", str(count)], capture_output=True, text=True, check=True)
    broker.delete_queues("bench.raw")
    return json.loads(out.stdout)["per_second"]


def returns_drain(record, broker, count, rounds=1):
    """Rounds alternate the worker and raw C; medians (peak RSS: the worst)."""
    rates, baselines, peaks = [], [], []
    for _ in range(rounds):
        rate, peak = returns_drain_once(broker, count)
        rates.append(rate)
        peaks.append(peak)
        baselines.append(raw_c(broker, count + 500))
    rate, baseline, peak = float(np.median(rates)), float(np.median(baselines)), max(peaks)
    target = 0.5 if count <= 5000 else None
    of = f", median of {rounds}" if rounds > 1 else ""
    record(f"returns-worker draining {count:,} single-price writes (+500 first prices), real handler (events/s{of})",
           f"{rate:,.0f}", f"{baseline:,.0f} (raw C, prefetch 100, manual ack, as many messages)",
           f"{rate / baseline:.2f}x", f">= {target}x" if target else "(reference, no target)",
           rate / baseline >= target if target else None)
    record(f"returns-worker peak RSS (VmHWM) draining {count:,} (MB)", f"{peak:.1f}", "", "", "<= 40 MB", peak <= 40)


def returns_drain_once(broker, count):
    data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
    api_port, worker_port = free_port(), free_port()
    broker.delete_queues("returns.events", "returns.events.dead")
    # The worker declares its queue, then stops: the backlog builds up meanwhile.
    start("returns-worker", broker, data, worker_port).stop()
    api = start("returns-api", broker, data, api_port)
    worker = None
    try:
        # A first price per symbol, then `count` writes of one price each (pace.c: symbol
        # n % 500 gets day 1 + n / 500), each a new return.
        session = requests.Session()
        for i in range(500):
            assert session.post(f"http://127.0.0.1:{api_port}/prices", json={
                "symbol": f"L{i:03d}", "prices": [{"date": "2001-01-02", "close": 100.0}]}).status_code == 202
        pace = subprocess.run([str(BASELINES / "pace"), "--port", str(api_port), "--rate", "20000", "--count",
                               str(count), "--threads", "16", "--symbols", "500"], capture_output=True, text=True)
        assert pace.returncode == 0, pace.stderr[-2000:]
        deadline = time.time() + 120
        while metric(f"http://127.0.0.1:{api_port}", "outbox_depth") > 0:
            assert time.time() < deadline, "returns-api's outbox did not empty"
            time.sleep(0.05)
        worker = start("returns-worker", broker, data, worker_port, wait=False)
        rate = timed_drain(f"http://127.0.0.1:{worker_port}", count + 500)
        peak = peak_mb(worker.pid)
    finally:
        if worker:
            worker.stop()
        api.stop()
        shutil.rmtree(data, ignore_errors=True)
    return rate, peak


def publish_returns(channel, events):
    for symbol, returns in events:
        body = json.dumps({"symbol": symbol, "returns": [{"date": d, "value": v} for d, v in returns]})
        channel.basic_publish("events", "returns.events.returns_calculated", body, pika.BasicProperties(
            message_id=str(uuid.uuid4()), type="returns_calculated", correlation_id=str(uuid.uuid4()),
            app_id="returns", content_type="application/json", timestamp=int(time.time()), delivery_mode=2,
            headers={"schema_version": 1}))


def business_days(start, n):
    days, d = [], start
    while len(days) < n:
        if d.weekday() < 5:
            days.append(d.isoformat())
        d += dt.timedelta(days=1)
    return days


def correlations_drain(record, broker, count, symbols=500, history=300):
    data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    broker.delete_queues("correlations.events", "correlations.events.dead")
    rng = np.random.default_rng(11)
    days = business_days(dt.date(2020, 1, 1), history + count // symbols + 1)
    worker = start("correlations-worker", broker, data, port)
    conn, channel = broker.channel()
    try:
        publish_returns(channel, [(f"S{i:03d}", list(zip(days[:history], rng.normal(0, 0.01, history).tolist())))
                                  for i in range(symbols)])
        deadline = time.time() + 300
        while metric(url, HANDLED) < symbols:
            assert time.time() < deadline, "the history was not handled"
            time.sleep(0.05)
        worker.stop()
        worker = None
        publish_returns(channel, [(f"S{i % symbols:03d}", [(days[history + i // symbols], float(rng.normal(0, 0.01)))])
                                  for i in range(count)])
        worker = start("correlations-worker", broker, data, port, wait=False)
        rate = timed_drain(url, count)
        peak = peak_mb(worker.pid)
    finally:
        conn.close()
        if worker:
            worker.stop()
        shutil.rmtree(data, ignore_errors=True)
    target = 2000 if count <= 5000 else None
    record(f"correlations-worker draining {count:,} returns_calculated (one return each), {symbols} symbols x 3 windows "
           f"(events/s)", f"{rate:,.0f}", "", "", f">= {target:,}/s" if target else "(reference, no target)",
           rate >= target if target else None)
    record(f"correlations-worker peak RSS (VmHWM) draining {count:,} (MB)", f"{peak:.1f}", "", "", "<= 40 MB", peak <= 40)


def burst(record, broker, seconds=10):
    """The 10 s durable wrk burst on returns-api with its worker running: when the outbox is
    empty again, and when the worker has applied everything."""
    from messaging import wrk
    data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
    api_port, worker_port = free_port(), free_port()
    broker.delete_queues("returns.events", "returns.events.dead")
    worker = start("returns-worker", broker, data, worker_port)
    api = start("returns-api", broker, data, api_port)
    try:
        api_url, worker_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
        result = wrk(api_url)
        ended = time.perf_counter()
        accepted = result["requests"] - result["non2xx"]
        outbox_empty = applied = None
        deadline = ended + 300
        while applied is None and time.perf_counter() < deadline:
            now = time.perf_counter()
            if outbox_empty is None and metric(api_url, "outbox_depth") == 0:
                outbox_empty = now - ended
            if metric(worker_url, HANDLED) >= accepted:
                applied = now - ended
                if outbox_empty is None:
                    outbox_empty = applied
            time.sleep(0.01)
        assert applied is not None, "the worker did not catch up"
        api_peak, worker_peak = peak_mb(api.pid), peak_mb(worker.pid)
    finally:
        api.stop()
        worker.stop()
        shutil.rmtree(data, ignore_errors=True)
    behind = applied - outbox_empty
    record(f"returns-worker catching up after a {seconds} s durable wrk burst ({accepted:,} writes at "
           f"{result['rps']:,.0f}/s): s after the api's outbox emptied",
           f"{behind:.2f} (outbox empty {outbox_empty:.2f} s after the burst, all applied {applied:.2f} s after)",
           "", "", "<= 2 s", behind <= 2)
    record("returns-api peak RSS (VmHWM) under the burst (MB)", f"{api_peak:.1f}", "", "", "<= 40 MB", api_peak <= 40)
    record("returns-worker peak RSS (VmHWM) catching up (MB)", f"{worker_peak:.1f}", "", "", "<= 40 MB",
           worker_peak <= 40)


def backfill(record, broker, symbols=500, years=10, window=120):
    days = 252 * years
    data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
    worker_port, api_port = free_port(), free_port()
    broker.delete_queues("correlations.events", "correlations.events.dead")
    worker = start("correlations-worker", broker, data, worker_port)
    api = start("correlations-api", broker, data, api_port)
    api_url, worker_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
    conn, channel = broker.channel()
    try:
        rng = np.random.default_rng(5)
        dates = business_days(dt.date(2015, 1, 2), days)
        market = rng.normal(0.0003, 0.01, days)
        returns = 0.7 * market + rng.normal(0, 0.012, (symbols, days))
        names = [f"S{i:03d}" for i in range(symbols)]
        publish_returns(channel, [(names[i], list(zip(dates, returns[i].tolist()))) for i in range(symbols)])
        deadline = time.time() + 600
        while metric(worker_url, HANDLED) < symbols:
            assert time.time() < deadline, "the history was not handled"
            time.sleep(0.1)
        # The worker's answer: POST /windows -> correlations_updated for the window; five new
        # windows (`window` .. `window` + 4), each a whole backfill, the median taken (single
        # runs here swing by half).
        q = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(q, "events", "correlations.events.correlations_updated")
        handler_times, elapsed_times = [], []
        for w in range(window, window + 5):
            handled_before = metric(worker_url, "handler_duration_seconds_sum")
            posted = time.perf_counter()
            r = requests.post(api_url + "/windows", json={"window": w}, timeout=10)
            assert r.status_code == 202, r.text
            elapsed = None
            while elapsed is None:
                method, props, body = channel.basic_get(q, auto_ack=True)
                if method and json.loads(body)["windows"] == [w]:
                    elapsed = (time.perf_counter() - posted) * 1000
                elif not method:
                    assert time.perf_counter() - posted < 300, "no correlations_updated for the window"
                    time.sleep(0.002)
            # The handler's own time: reading the series, every pair, the rows written, the commit.
            handler_times.append((metric(worker_url, "handler_duration_seconds_sum") - handled_before) * 1000)
            elapsed_times.append(elapsed)
        handler = sorted(handler_times)[2]
        elapsed = sorted(elapsed_times)[2]
        print(f"    backfill handler ms: {' '.join(f'{t:.1f}' for t in handler_times)}")
        worker_peak = peak_mb(worker.pid)
        # numpy on the same aligned returns, plus writing its matrix to SQLite, one row per symbol.
        tail = returns[:, -window:]
        with tempfile.TemporaryDirectory() as tmp:
            def numpy_backfill(path):
                m = np.corrcoef(tail)
                db = sqlite3.connect(path)
                db.execute("CREATE TABLE IF NOT EXISTS rows (idx INTEGER PRIMARY KEY, cells BLOB)")
                db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)",
                               ((i, m[i, :i].tobytes()) for i in range(symbols)))
                db.commit()
                db.close()
                return m
            times = []
            for k in range(5):
                t = time.perf_counter()
                reference = numpy_backfill(str(pathlib.Path(tmp, f"n{k}.sqlite")))
                times.append((time.perf_counter() - t) * 1000)
            baseline = sorted(times)[len(times) // 2]
            print(f"    numpy baseline ms: {' '.join(f'{t:.1f}' for t in times)}")
        got = requests.get(api_url + "/correlations", params={"symbols": ",".join(names), "window": window},
                           timeout=60).json()
        ours = np.array([[np.nan if v is None else v for v in row] for row in got["matrix"]])
        diff = float(np.nanmax(np.abs(ours - reference)))
        record(f"correlations-worker backfill of a new window ({window}) over {symbols} symbols x {years} years, "
               f"{symbols * (symbols - 1) // 2:,} pairs: its handler (ms, median of 5 new windows; POST /windows -> "
               f"correlations_updated in brackets)", f"{handler:.1f} ({elapsed:.0f})",
               f"numpy corrcoef + its matrix into SQLite {baseline:.1f} (median of 5)",
               f"{handler / baseline:.2f}x", "<= 1.0x, max abs diff vs numpy <= 1e-9",
               handler <= baseline and diff <= 1e-9)
        print(f"    max |stega - numpy| = {diff:.2e}")
        record(f"correlations-worker peak RSS (VmHWM) after {symbols} x {years} years and the backfill (MB)",
               f"{worker_peak:.1f}", "", "", "<= 40 MB", worker_peak <= 40)
        session = requests.Session()
        for n in (100, 500):
            params = {"symbols": ",".join(names[:n]), "window": 252}
            session.get(api_url + "/correlations", params=params, timeout=60)
            times = []
            for _ in range(15):
                t = time.perf_counter()
                r = session.get(api_url + "/correlations", params=params, timeout=60)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
            median = sorted(times)[len(times) // 2]
            ok = median < 100 if n == 500 else None
            record(f"GET /correlations, {n} symbols, window 252 (ms, median of 15)", f"{median:.1f}", "", "",
                   "< 100 ms" if n == 500 else "(reference)", ok)
        api_peak = peak_mb(api.pid)
        record("correlations-api peak RSS (VmHWM) after the matrix reads (MB)", f"{api_peak:.1f}", "", "", "<= 40 MB",
               api_peak <= 40)
    finally:
        conn.close()
        api.stop()
        worker.stop()
        shutil.rmtree(data, ignore_errors=True)


def run(record, broker, which):
    if "drain" in which:
        returns_drain(record, broker, 5_000, rounds=3)
        returns_drain(record, broker, 50_000)
        for count in (5_000, 50_000):
            correlations_drain(record, broker, count)
    if "burst" in which:
        burst(record, broker)
        latency(record, broker, 2000, rate=200, target=True, why="idle")
        latency(record, broker, 2000, rate=200, target=True, why="right after a 10 s durable wrk burst", burst=True)
    if "backfill" in which:
        backfill(record, broker)
