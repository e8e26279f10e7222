#!/usr/bin/env python3
"""make bench: the project's figures beside their baselines, measured in the same run.

Scenarios (release build; load only on 127.0.0.1, bounded in count and time):
  - http, latency, consume: bench/messaging.py (POST /prices vs C and the seed design, the
    end-to-end latency, the worker's consume rate vs raw C and the seed's pika consumer);
  - drain, burst, backfill: bench/workers.py (the real workers draining backlogs vs raw C,
    catching up after the durable burst, the latency at 200 req/s idle and right after the
    burst, the correlations backfill of a new window vs numpy, GET /correlations);
  - ingest 500 symbols x 10 years of daily prices through returns-api, until every return
    and every default-window correlation (20, 60, 252) is computed and readable.

Prints one table and writes it to bench/results/latest.md."""
import concurrent.futures as futures
import datetime as dt
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

from messaging import Broker, free_port, rss_mb

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(os.environ.get("STEGA_BIN_DIR", ROOT / ".build/release"))
ROWS = []  # (scenario, project, baseline, ratio, target, verdict)


def record(scenario, project, baseline="", ratio="", target="", ok=None):
    verdict = "" if ok is None else ("pass" if ok else "FAIL")
    ROWS.append((scenario, project, baseline, ratio, target, verdict))
    print(f"  {scenario}: {project}  {baseline}  {ratio}  {verdict}", flush=True)


def ingest(symbols=500, years=10):
    days = 252 * years
    broker = Broker()
    data = tempfile.mkdtemp(prefix="stega-bench-data.")
    env = dict(os.environ, STEGA_AMQP_URL=broker.url, STEGA_DATA_DIR=data,
               STEGA_LOG_LEVEL="warning")
    procs = {}
    try:
        for name in ("returns-worker", "correlations-worker", "returns-api", "correlations-api"):
            p = free_port()
            log = open(pathlib.Path(data, f"{name}.log"), "w")
            procs[name] = (subprocess.Popen([str(BIN / name)], env=dict(env, STEGA_HTTP_PORT=str(p)), stdout=log,
                                            stderr=subprocess.STDOUT), f"http://127.0.0.1:{p}")
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    if requests.get(procs[name][1] + "/readyz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.1)
        api, corr = procs["returns-api"][1], procs["correlations-api"][1]
        rng = np.random.default_rng(42)
        start_day = dt.date(2015, 1, 2)
        dates = []
        d = start_day
        while len(dates) < days:
            if d.weekday() < 5:
                dates.append(d.isoformat())
            d += dt.timedelta(days=1)
        market = rng.normal(0.0003, 0.01, days)
        names = [f"S{i:03d}" for i in range(symbols)]

        def post(i):
            closes = 50 * np.cumprod(1 + 0.7 * market + rng.normal(0, 0.012, days))
            body = {"symbol": names[i], "prices": [{"date": x, "close": round(float(c), 4)} for x, c in zip(dates, closes)]}
            r = requests.post(api + "/prices", json=body, timeout=60)
            assert r.status_code == 202, r.text

        t0 = time.perf_counter()
        with futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(post, range(symbols)))
        posted = time.perf_counter() - t0
        all_symbols = ",".join(names)

        def complete(window):
            r = requests.get(corr + "/correlations", params={"symbols": all_symbols, "window": window}, timeout=120)
            return r.status_code == 200 and all(v is not None for row in r.json()["matrix"] for v in row)

        deadline = time.perf_counter() + 900
        while time.perf_counter() < deadline and not all(complete(w) for w in (252, 60, 20)):
            time.sleep(2)
        total = time.perf_counter() - t0
        done = all(complete(w) for w in (252, 60, 20))
        returns_ok = all(len(requests.get(f"{api}/returns/{s}", timeout=30).json()["returns"]) == days - 1
                         for s in names)
        record(f"ingest {symbols} symbols x {years} years via REST ({symbols * days:,} prices)",
               f"POSTs {posted:.1f} s; all returns and {3 * symbols * (symbols - 1) // 2:,} correlations readable after {total:.1f} s",
               "", "", "completes (no target)", done and returns_ok)
        time.sleep(1.5)  # "after the load": the processes give memory back once a burst is over
        for name, (proc, _) in procs.items():
            record(f"{name} RSS after the ingest (MB)", f"{rss_mb(proc.pid):.1f}", "", "", "<= 40 MB",
                   rss_mb(proc.pid) <= 40)
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


def fanout(subscribers=1000, rounds=5):
    """1,000 WebSocket subscribers on the boundary; one event published with pika; the time
    from publish until each subscriber has it."""
    import asyncio
    import json as jsonlib
    import uuid

    import pika
    import websockets

    broker = Broker()
    http_port = free_port()
    env = dict(os.environ, STEGA_AMQP_URL=broker.url, STEGA_HTTP_PORT=str(http_port),
               STEGA_LOG_LEVEL="warning", STEGA_EXCHANGE="events")
    boundary = subprocess.Popen([str(BIN / "boundary")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        conn = pika.BlockingConnection(pika.URLParameters(env["STEGA_AMQP_URL"]))
        channel = conn.channel()
        channel.exchange_declare(exchange="events", exchange_type="direct", durable=True)

        async def run():
            clients = []
            for _ in range(subscribers):
                ws = await websockets.connect(f"ws://127.0.0.1:{http_port}/ws", max_queue=None)
                await ws.send('{"action":"subscribe","pattern":"returns.events.*"}')
                clients.append(ws)
            for ws in clients:
                await ws.recv()  # subscribed
            latencies = []
            for _ in range(rounds):
                event_id = str(uuid.uuid4())
                body = jsonlib.dumps({"symbol": "FAN", "first_date": "2024-01-02", "last_date": "2024-01-02", "count": 1})
                start = time.perf_counter()
                channel.basic_publish("events", "returns.events.prices_recorded", body, pika.BasicProperties(
                    message_id=event_id, type="prices_recorded", correlation_id=str(uuid.uuid4()), app_id="bench",
                    content_type="application/json", timestamp=int(time.time())))

                async def one(ws):
                    while True:
                        m = jsonlib.loads(await ws.recv())
                        if m.get("event_id") == event_id:
                            return time.perf_counter() - start
                latencies += await asyncio.wait_for(asyncio.gather(*(one(ws) for ws in clients)), 60)
            for ws in clients:
                await ws.close()
            return latencies

        latencies = np.array(asyncio.run(run())) * 1000
        conn.close()
        p50, p99, worst = np.percentile(latencies, 50), np.percentile(latencies, 99), latencies.max()
        record(f"WebSocket fan-out: {subscribers} subscribers x {rounds} events, publish -> received (ms)",
               f"p50 {p50:.1f}, p99 {p99:.1f}, max {worst:.1f}", "", "", "all received (no target)",
               len(latencies) == subscribers * rounds)
    finally:
        boundary.send_signal(signal.SIGTERM)
        try:
            boundary.wait(15)
        except subprocess.TimeoutExpired:
            boundary.kill()
        broker.stop()


def main():
    print(f"stega events bench — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    which = sys.argv[1:] or ["http", "latency", "consume", "drain", "burst", "backfill", "ingest", "fanout", "postgres"]
    if {"http", "latency", "consume"} & set(which):
        import messaging
        broker = messaging.Broker()
        try:
            # STEGA_BENCH_MAX_RPS: the rate the latency scenario halves, when http is not run.
            max_rps = float(os.environ.get("STEGA_BENCH_MAX_RPS", 0)) or None
            if "http" in which:
                max_rps = messaging.http(record, broker)["durable"]["rps"]
            if "latency" in which:
                # "Half the max rate" is half of what this path sustains: first it is offered
                # half the durable wrk rate (more than it sustains on this machine) and the rate
                # the events arrive at is its max; then it is paced at half of that (the target),
                # and at a light, steady load (a reference).
                offered = (max_rps or 2000) / 2
                sustained = messaging.latency(record, broker, max_rps or 2000, rate=offered, target=False,
                                              why=f"half the durable wrk rate of {max_rps or 2000:.0f}: "
                                                  "the max rate of the path")
                saturated = sustained < offered * 0.95
                max_rate = sustained if saturated else offered
                messaging.latency(record, broker, max_rps or 2000, rate=max_rate / 2, target=True,
                                  why=f"half the path's max rate of {max_rate:.0f}/s" if saturated
                                  else f"half of {offered:.0f}/s, which the path sustained (its max is higher)")
            if "consume" in which:
                messaging.consume(record, broker)
        finally:
            broker.stop()
    if {"drain", "burst", "backfill"} & set(which):
        import messaging
        import workers
        broker = messaging.Broker()
        try:
            workers.run(record, broker, which)
        finally:
            broker.stop()
    if "postgres" in which:
        import messaging
        import postgres
        broker = messaging.Broker()
        try:
            postgres.run(record, broker)
        finally:
            broker.stop()
    if "ingest" in which:
        ingest()
    if "fanout" in which:
        fanout()
    header = "| scenario | project | baseline | ratio | target | result |\n|---|---|---|---|---|---|\n"
    table = header + "".join(f"| {' | '.join(str(c) for c in row)} |\n" for row in ROWS)
    print()
    print(table)
    out = ROOT / "bench/results/latest.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    out.write_text(f"# make bench, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\nMachine: {cpu}, "
                   f"{os.cpu_count()} cores\n\n{table}")
    print(f"written to {out}")
    failed = [r[0] for r in ROWS if r[5] == "FAIL"]
    if failed:
        print("targets not met: " + "; ".join(failed))
    # The verdicts are in the table; the exit status says only whether every scenario ran.
    return 0


if __name__ == "__main__":
    sys.exit(main())
