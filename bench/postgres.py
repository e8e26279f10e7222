"""`make bench` on PostgreSQL (DESIGN.md "Scale-out"): the durable POST /prices path with
returns-api on PostgreSQL — one api, and two apis on one database — beside the C publisher in
the same run, and returns-worker draining a backlog on PostgreSQL beside the raw C consumer.
PostgreSQL is a throw-away server of Debian's package (scripts/postgres.sh), fsync on."""
import concurrent.futures as futures
import json
import pathlib
import shutil
import subprocess
import tempfile
import uuid

import numpy as np

import workers
from messaging import BASELINES, BIN, ROOT, WRK, Proc, free_port, metric, service_env, wrk

SCRIPT = str(ROOT / "scripts/postgres.sh")


class Postgres:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="stega-bench-postgres.")
        subprocess.run([SCRIPT, "start", self.dir, str(free_port())], check=True, capture_output=True)

    def new_database(self):
        name = f"bench_{uuid.uuid4().hex[:8]}"
        url = subprocess.run([SCRIPT, "newdb", self.dir, name], check=True, capture_output=True, text=True).stdout.strip()
        return url + "?sslmode=disable"

    def stop(self):
        subprocess.run([SCRIPT, "stop", self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk_split(urls):
    """wrk on each api at once (the 32 connections and 2 threads of WRK split among them);
    the req/s summed, the worst p50 and p99."""
    def one(url):
        argv = ["wrk", f"-t{max(1, 2 // len(urls))}", f"-c{32 // len(urls)}"] + WRK[3:] + [url + "/prices"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        result = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
        assert result["errors"] + result["non2xx"] == 0, out.stdout
        return result
    with futures.ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(one, urls))
    return {"rps": sum(r["requests"] / r["seconds"] for r in results),
            "p50_ms": max(r["p50_ms"] for r in results), "p99_ms": max(r["p99_ms"] for r in results)}


def http(record, broker, postgres, rounds=3):
    figures = {"c": [], 1: [], 2: []}
    for _ in range(rounds):
        broker.reset_queue("bench.sink", "returns.events.prices_recorded")
        port = free_port()
        c = Proc([str(BASELINES / "publisher"), "--port", str(port), "--amqp-port", str(broker.port), "--confirm"],
                 ready_line="ready")
        try:
            figures["c"].append(wrk(f"http://127.0.0.1:{port}"))
        finally:
            c.stop()
        for apis in (1, 2):
            broker.reset_queue("bench.sink", "returns.events.prices_recorded")
            url = postgres.new_database()
            data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
            procs = []
            try:
                for _ in range(apis):
                    port = free_port()
                    procs.append(Proc([str(BIN / "returns-api")],
                                      env=service_env(broker, data, "durable", port, STEGA_DATABASE_URL=url),
                                      ready_url=f"http://127.0.0.1:{port}/readyz"))
                    procs[-1].url = f"http://127.0.0.1:{port}"
                figures[apis].append(wrk_split([p.url for p in procs]))
            finally:
                for p in procs:
                    p.stop()
                shutil.rmtree(data, ignore_errors=True)
    med = {k: {f: float(np.median([r[f] for r in v])) for f in ("rps", "p50_ms", "p99_ms")} for k, v in figures.items()}
    c = med["c"]
    for apis in (1, 2):
        p = med[apis]
        target = 0.6 if apis == 1 else None
        record(f"POST /prices, durable, returns-api on PostgreSQL ({apis} api{'s' if apis > 1 else ''}, one database; "
               f"wrk -t2 -c32 -d10s split among them; median of {rounds}): req/s vs C (persistent + confirms)",
               f"{p['rps']:.0f} req/s (p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms)",
               f"{c['rps']:.0f} req/s (p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms)",
               f"{p['rps'] / c['rps']:.2f}x", f">= {target}x" if target else "(reference, no target)",
               p["rps"] / c["rps"] >= target if target else None)


def drain(record, broker, postgres, count=5000):
    workers.EXTRA_ENV = {"STEGA_DATABASE_URL": postgres.new_database()}
    try:
        rate, peak = workers.returns_drain_once(broker, count)
    finally:
        workers.EXTRA_ENV = {}
    baseline = workers.raw_c(broker, count + 500)
    record(f"returns-worker on PostgreSQL draining {count:,} single-price writes (+500 first prices), real handler (events/s)",
           f"{rate:,.0f}", f"{baseline:,.0f} (raw C, prefetch 100, manual ack, as many messages)",
           f"{rate / baseline:.2f}x", "(reference, no target)", None)
    record(f"returns-worker on PostgreSQL, peak RSS (VmHWM) draining {count:,} (MB)", f"{peak:.1f}", "", "",
           "(reference)", None)


def run(record, broker):
    postgres = Postgres()
    try:
        http(record, broker, postgres)
        drain(record, broker, postgres)
    finally:
        postgres.stop()
