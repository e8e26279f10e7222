"""The messaging scenarios of `make bench`, each beside its baseline in the same run:

  http      POST /prices through returns-api (wrk -t2 -c32 -d10s), durable and transient, vs the
            C publisher (bench/baseline/publisher.c: libmicrohttpd + one rabbitmq-c publisher
            thread, persistent + batched confirms / no confirms) and, durable, the seed's design
            (bench/baseline/seed_api.py: Flask + a pika BlockingConnection per request); then the
            time until the outbox is empty again.
  latency   POST -> returns-worker -> returns_calculated seen by a C consumer, paced at half
            the project's measured max rate by bench/tools/pace.c (open loop, latency from each
            request's due time): p50 / p99.
  consume   the worker runtime with a no-op handler (stega-bench noop-worker) draining 200,000
            queued messages, durable vs the raw C consumer (prefetch 100, manual ack), transient
            vs the seed's pika consumer (auto-ack). A consumer whose queue only exists while it
            is connected is stopped (SIGSTOP) while the queue is filled, and timed from SIGCONT.

Each scenario runs rounds alternating project and baseline and reports medians."""
import http.client as httplib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(os.environ.get("STEGA_BIN_DIR", ROOT / ".build/release"))
BASELINES = pathlib.Path(os.environ.get("STEGA_BASELINE_DIR", ROOT / ".build-bench"))
WRK = ["wrk", "-t2", "-c32", "-d10s", "--latency", "-s", str(ROOT / "bench/post_price.lua")]


sys.path.insert(0, str(ROOT / "scripts"))
from ports import free_port  # noqa: E402,F401  (below the ephemeral range: see scripts/ports.py)


def rss_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Broker:
    """A throw-away RabbitMQ node for the messaging scenarios (scripts/broker.sh)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="stega-bench-broker.")
        self.port = free_port(pair=True)
        subprocess.run([str(ROOT / "scripts/broker.sh"), "start", self.dir, str(self.port)], check=True,
                       capture_output=True)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}"

    def channel(self):
        import pika
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        return conn, conn.channel()

    def reset_queue(self, name, key, exchange="events", durable=True):
        conn, ch = self.channel()
        ch.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
        ch.queue_delete(queue=name)
        ch.queue_declare(queue=name, durable=durable)
        ch.queue_bind(queue=name, exchange=exchange, routing_key=key)
        conn.close()

    def delete_queues(self, *names):
        conn, ch = self.channel()
        for name in names:
            ch.queue_delete(queue=name)
        conn.close()

    def stop(self):
        subprocess.run([str(ROOT / "scripts/broker.sh"), "stop", self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Proc:
    """A process of the bench, ended by its PID."""

    def __init__(self, argv, env=None, ready_url=None, ready_line=None, timeout=30):
        self.log = tempfile.NamedTemporaryFile(prefix="stega-bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if ready_line else self.log,
                                     stderr=self.log, text=True)
        deadline = time.time() + timeout
        if ready_line:
            line = self.proc.stdout.readline()
            assert ready_line in line, f"{argv[0]}: {line!r}"
        while ready_url and time.time() < deadline:
            try:
                if requests.get(ready_url, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, f"{argv} exited: {open(self.log.name).read()[-2000:]}"
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


def wrk(url, tolerate_failures=False):
    """wrk's figures; req/s counts only the 202s. The project's servers must answer every
    request 202; a baseline may fail a few (the seed's connection per request now and then
    does), which are counted out of its rate, not allowed to stop the run."""
    out = subprocess.run(WRK + [url + "/prices"], capture_output=True, text=True, timeout=60)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    result["failed"] = result["errors"] + result["non2xx"]
    result["rps"] = (result["requests"] - result["non2xx"]) / result["seconds"]
    assert tolerate_failures or result["failed"] == 0, out.stdout
    return result


def metric(url, name):
    text = requests.get(url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def service_env(broker, data_dir, mode, port, **extra):
    return dict(os.environ, STEGA_AMQP_URL=broker.url, STEGA_DATA_DIR=str(data_dir), STEGA_QUEUE_MODE=mode,
                STEGA_HTTP_PORT=str(port), STEGA_LOG_LEVEL="warning", **extra)


def http(record, broker, rounds=3):
    """POST /prices: returns-api vs the C publisher (and the seed design, durable)."""
    results = {}
    for mode in ("durable", "transient"):
        project, baseline = [], []
        depth_seconds, rss = [], []
        for _ in range(rounds):
            # The C baseline: persistent + confirms (durable) or neither (transient).
            broker.reset_queue("bench.sink", "returns.events.prices_recorded")
            port = free_port()
            c = Proc([str(BASELINES / "publisher"), "--port", str(port), "--amqp-port", str(broker.port),
                      "--confirm" if mode == "durable" else "--no-confirm"], ready_line="ready")
            try:
                baseline.append(wrk(f"http://127.0.0.1:{port}"))
            finally:
                c.stop()
            # returns-api, a fresh database; its events go to the same bound queue.
            broker.reset_queue("bench.sink", "returns.events.prices_recorded")
            data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
            port = free_port()
            api = Proc([str(BIN / "returns-api")], env=service_env(broker, data, mode, port),
                       ready_url=f"http://127.0.0.1:{port}/readyz")
            try:
                url = f"http://127.0.0.1:{port}"
                project.append(wrk(url))
                ended = time.perf_counter()
                while metric(url, "outbox_depth") > 0 and time.perf_counter() - ended < 30:
                    time.sleep(0.02)
                depth_seconds.append(time.perf_counter() - ended)
                time.sleep(1.5)  # "after the load", as in the consume scenario: memory goes back once a burst is over
                rss.append(rss_mb(api.pid))
            finally:
                api.stop()
                shutil.rmtree(data, ignore_errors=True)
        p = {k: float(np.median([r[k] for r in project])) for k in ("rps", "p50_ms", "p99_ms")}
        b = {k: float(np.median([r[k] for r in baseline])) for k in ("rps", "p50_ms", "p99_ms")}
        target = 0.70 if mode == "durable" else 0.60
        what = "persistent + confirms" if mode == "durable" else "no confirms"
        record(f"POST /prices, {mode} (wrk -t2 -c32 -d10s; median of {rounds}): req/s vs C ({what})",
               f"{p['rps']:.0f} req/s (p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms)",
               f"{b['rps']:.0f} req/s (p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms)",
               f"{p['rps'] / b['rps']:.2f}x", f">= {target:.2f}x", p["rps"] / b["rps"] >= target)
        record(f"outbox empty again after the {mode} load (s, worst of {rounds})", f"{max(depth_seconds):.2f}",
               "", "", "<= 2 s", max(depth_seconds) <= 2)
        record(f"returns-api RSS 1.5 s after the outbox emptied, {mode} (MB, worst of {rounds})", f"{max(rss):.1f}", "", "",
               "<= 40 MB", max(rss) <= 40)
        results[mode] = p
    # The seed's design: one broker connection per request (one run: it is slow and steady).
    broker.reset_queue("bench.sink", "returns.events.prices_recorded")
    port = free_port()
    seed = Proc([sys.executable, str(ROOT / "bench/baseline/seed_api.py"), "--port", str(port), "--amqp-port",
                 str(broker.port)], ready_url=None)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                http_client = httplib.HTTPConnection("127.0.0.1", port, timeout=1)
                http_client.request("GET", "/")
                http_client.getresponse()
                break
            except OSError:
                time.sleep(0.1)
        s = wrk(f"http://127.0.0.1:{port}", tolerate_failures=True)
    finally:
        seed.stop()
    p = results["durable"]
    failed = f", {s['failed']} failed" if s["failed"] else ""
    record("POST /prices, durable, vs the seed design (Flask + pika, a connection per request)",
           f"{p['rps']:.0f} req/s", f"{s['rps']:.0f} req/s (p50 {s['p50_ms']:.0f} ms{failed})",
           f"{p['rps'] / s['rps']:.1f}x", ">= 40x", p["rps"] / s["rps"] >= 40)
    broker.delete_queues("bench.sink")
    return results


def latency(record, broker, max_rps, seconds=10, rate=None, target=True, why=None, burst=False):
    """POST /prices -> returns-worker -> returns_calculated at a consumer, paced at `rate` (half
    of `max_rps` if not given); with `target`, judged against p50 <= 3 ms, p99 <= 20 ms, else a
    reference. Due times come from bench/tools/pace.c,
    arrival times from the C consumer (bench/baseline/consumer.c --arrivals), both on
    CLOCK_MONOTONIC. With `burst`, the 10 s durable wrk burst comes first, and the paced
    requests start as it ends (the worker possibly still behind). Returns the rate at which
    returns_calculated arrived (per second, first to last): what the pipeline sustained."""
    rate = rate or max(50.0, max_rps / 2)
    total = int(rate * seconds)
    data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
    api_port, worker_port = free_port(), free_port()
    broker.delete_queues("returns.events", "returns.events.dead")
    worker = Proc([str(BIN / "returns-worker")], env=service_env(broker, data, "durable", worker_port),
                  ready_url=f"http://127.0.0.1:{worker_port}/readyz")
    api = Proc([str(BIN / "returns-api")], env=service_env(broker, data, "durable", api_port),
               ready_url=f"http://127.0.0.1:{api_port}/readyz")
    symbols = [f"L{i:03d}" for i in range(200)]
    consumer = None
    try:
        # A first price per symbol, so that every timed POST yields exactly one new return.
        session = requests.Session()
        for s in symbols:
            r = session.post(f"http://127.0.0.1:{api_port}/prices",
                             json={"symbol": s, "prices": [{"date": "2001-01-02", "close": 100.0}]})
            assert r.status_code == 202
        deadline = time.time() + 30
        while metric(f"http://127.0.0.1:{worker_port}", "events_consumed_total") < len(symbols):
            assert time.time() < deadline, "the warm-up events were not handled"
            time.sleep(0.1)
        # After a burst, the consumer also sees the burst's events the worker still applies.
        behind = 0
        if burst:
            burst_result = wrk(f"http://127.0.0.1:{api_port}")
            behind = burst_result["requests"] - burst_result["non2xx"]
        consumer = subprocess.Popen([str(BASELINES / "consumer"), "--amqp-port", str(broker.port), "--bind",
                                     "returns.events.returns_calculated", "--no-ack", "--arrivals", "--count",
                                     str(total + behind), "--timeout", str(seconds + (15 if burst else 30))],
                                    stdout=subprocess.PIPE, text=True)
        assert "ready" in consumer.stdout.readline()
        # bench/tools/pace.c sends them (open loop, keep-alive connections, a thread each):
        # Python posters cost as much CPU as the services they measure.
        pace = subprocess.run([str(BASELINES / "pace"), "--port", str(api_port), "--rate", str(rate), "--count",
                               str(total), "--symbols", str(len(symbols))], capture_output=True, text=True,
                              timeout=seconds + 60)
        if pace.returncode != 0:
            raise RuntimeError(f"bench/tools/pace.c failed: {pace.stderr.strip()[-2000:]}")
        sent = {}
        for line in pace.stdout.splitlines():
            op, due = line.split()[:2]
            sent[op] = int(due)
        late = int(pace.stderr.split("late")[1])
        out, _ = consumer.communicate(timeout=seconds + 60)
        arrived = dict(line.split() for line in out.splitlines() if line.strip())
        lat = np.array([(int(arrived[k]) - t) / 1e6 for k, t in sent.items() if k in arrived])
        if os.environ.get("STEGA_BENCH_LATENCY_DUMP"):  # send time (ns) and latency (ms), for a closer look
            with open(os.environ["STEGA_BENCH_LATENCY_DUMP"], "w") as f:
                for k, t in sorted(sent.items(), key=lambda kv: kv[1]):
                    f.write(f"{t} {(int(arrived[k]) - t) / 1e6 if k in arrived else 'lost'}\n")
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        stamps = sorted(int(arrived[k]) for k in sent if k in arrived)
        sustained = len(stamps) / max(1e-9, (stamps[-1] - stamps[0]) / 1e9) if len(stamps) > 1 else 0.0
        paced = why or f"half of {max_rps:.0f}"
        record(f"POST -> returns-worker -> returns_calculated at a consumer, {rate:.0f} req/s asked ({paced}), "
               f"{len(sent)} sent ({late} > 1 ms late), {len(lat)}/{len(sent)} seen, arriving at "
               f"{sustained:.0f}/s (ms)",
               f"p50 {p50:.2f}, p99 {p99:.2f}", "", "",
               "p50 <= 3 ms, p99 <= 20 ms" if target else "(reference, no target)",
               bool(p50 <= 3 and p99 <= 20 and len(lat) == len(sent)) if target else None)
        if target:
            record("returns-worker RSS after the latency run (MB)", f"{rss_mb(worker.pid):.1f}", "", "", "<= 40 MB",
                   rss_mb(worker.pid) <= 40)
        return sustained
    finally:
        if consumer and consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        api.stop()
        worker.stop()
        shutil.rmtree(data, ignore_errors=True)


def consume(record, broker, count=200_000, rounds=3):
    """The worker runtime with a no-op handler vs the raw C consumer / the seed's pika consumer."""
    fill = [str(BASELINES / "fill"), "--amqp-port", str(broker.port), "--exchange", "events",
            "--routing-key", "bench.events.tick", "--count", str(count)]

    def noop_worker(mode, data, port, wait=True):
        return Proc([str(BIN / "stega-bench"), "noop-worker"],
                    env=service_env(broker, data, mode, port, STEGA_PREFETCH="100"),
                    ready_url=f"http://127.0.0.1:{port}/readyz" if wait else None)

    def drain(url, since=None):
        """Polls the worker's consumed counter until it reaches `count`: messages per second
        from `since` (the process's start, for a pre-filled queue) or from the first poll
        that saw a message."""
        first, last = (since, 0) if since else None, None
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            try:
                n = metric(url, "events_consumed_total")
            except requests.ConnectionError:  # not listening yet
                time.sleep(0.005)
                continue
            t = time.perf_counter()
            if n > 0 and first is None:
                first = (t, n)
            if n >= count:
                last = (t, n)
                break
            time.sleep(0.01)
        assert last, "the worker did not drain the queue"
        return (last[1] - first[1]) / (last[0] - first[0])

    for mode in ("durable", "transient"):
        project, baseline, rss = [], [], []
        for _ in range(rounds):
            data = pathlib.Path(tempfile.mkdtemp(prefix="stega-bench-data."))
            port = free_port()
            persistent = ["--persistent"] if mode == "durable" else []
            # The baseline consumes a full queue: durable, the raw C consumer on bench.events
            # filled beforehand; transient, the seed's consumer, stopped (SIGSTOP) while its
            # exclusive queue is filled, then let go.
            if mode == "durable":
                broker.delete_queues("bench.events", "bench.events.dead")
                noop_worker(mode, data, port).stop()  # declares bench.events with its arguments
                subprocess.run(fill + persistent, check=True)
                out = subprocess.run([str(BASELINES / "consumer"), "--amqp-port", str(broker.port), "--queue",
                                      "bench.events", "--count", str(count)], capture_output=True, text=True,
                                     check=True)
                baseline.append(json.loads(out.stdout)["per_second"])
            else:
                seed = subprocess.Popen([sys.executable, str(ROOT / "bench/baseline/seed_consumer.py"), "--amqp-port",
                                         str(broker.port), "--routing-key", "bench.events.tick", "--count",
                                         str(count)], stdout=subprocess.PIPE, text=True)
                assert "ready" in seed.stdout.readline()
                seed.send_signal(signal.SIGSTOP)
                subprocess.run(fill, check=True)
                seed.send_signal(signal.SIGCONT)
                out, _ = seed.communicate(timeout=600)
                baseline.append(json.loads(out.strip().splitlines()[-1])["per_second"])
            # The project's worker: ready (its queue declared and consumed), stopped while the
            # queue is filled, then let go and timed from that moment until the last message.
            worker = noop_worker(mode, data, port)
            try:
                worker.proc.send_signal(signal.SIGSTOP)
                subprocess.run(fill + persistent, check=True)
                resumed = time.perf_counter()
                worker.proc.send_signal(signal.SIGCONT)
                project.append(drain(f"http://127.0.0.1:{port}", since=resumed))
                time.sleep(1.5)  # "after the load": the worker gives memory back once a burst is over
                rss.append(rss_mb(worker.pid))
            finally:
                worker.proc.send_signal(signal.SIGCONT)
                worker.stop()
            shutil.rmtree(data, ignore_errors=True)
        p, b = float(np.median(project)), float(np.median(baseline))
        if mode == "durable":
            record(f"worker consume + dispatch, durable, no-op handler, {count:,} queued (msg/s, median of {rounds})",
                   f"{p:,.0f}", f"{b:,.0f} (raw C, prefetch 100, manual ack)", f"{p / b:.2f}x", ">= 0.70x",
                   p / b >= 0.70)
        else:
            record(f"worker consume + dispatch, transient, no-op handler, {count:,} (msg/s, median of {rounds})",
                   f"{p:,.0f}", f"{b:,.0f} (seed: pika, auto-ack)", f"{p / b:.2f}x", ">= 1.5x", p / b >= 1.5)
        record(f"no-op worker RSS after {count:,} {mode} messages (MB, worst of {rounds})", f"{max(rss):.1f}", "", "",
               "<= 40 MB", max(rss) <= 40)
    broker.delete_queues("bench.events", "bench.events.dead")
