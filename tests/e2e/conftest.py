"""Fixtures of the end-to-end tests: the real binaries, started as processes against the
throw-away broker that `make test` runs (STEGA_TEST_AMQP_URL), on free loopback ports."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid

import pika
import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("STEGA_BIN_DIR", ROOT / ".build/debug"))

sys.path.insert(0, str(ROOT / "scripts"))
from ports import free_port, reserve  # noqa: E402  (below the ephemeral range: see scripts/ports.py)

# The throw-away broker's and PostgreSQL's ports: a restart frees them for a moment, and no
# process of a test may take them then.
for _name in ("STEGA_TEST_AMQP_URL", "STEGA_TEST_AMQPS_URL", "STEGA_TEST_DATABASE_URL"):
    _port = urllib.parse.urlsplit(os.environ.get(_name, "")).port
    if _port:
        reserve(_port, _port + 20000)


def wait_until(what, predicate, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def amqp_url():
    url = os.environ.get("STEGA_TEST_AMQP_URL")
    if not url:
        pytest.skip("STEGA_TEST_AMQP_URL is not set: run through `make test`, which starts a broker")
    return url


def rabbitmqctl(*args):
    """rabbitmqctl against the test broker (scripts/broker.sh ctl)."""
    out = subprocess.run([str(ROOT / "scripts/broker.sh"), "ctl", os.environ["STEGA_TEST_BROKER_DIR"], "-q", *args],
                         check=True, capture_output=True, text=True, timeout=60)
    return out.stdout


class Process:
    """One of the project's binaries, running with its log in a file."""

    def __init__(self, name, env, log_dir, alias=None):
        self.name = alias or name
        self.log_path = log_dir / f"{self.name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(BIN / name)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = int(env["STEGA_HTTP_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"

    def ready(self, timeout=20):
        def ok():
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_text()}"
            try:
                return requests.get(self.url + "/readyz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        wait_until(f"{self.name} /readyz", ok, timeout)
        return self

    def terminate(self, timeout=10):
        """SIGTERM; returns the exit code (None if it did not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text()


class Stack:
    """returns-api and returns-worker sharing a data directory and an exchange."""

    def __init__(self, amqp_url, tmp_path, mode="durable", exchange=None, extra_env=None):
        self.exchange = exchange or f"events-{uuid.uuid4().hex[:8]}"
        self.amqp_url = amqp_url
        self.tmp_path = tmp_path
        self.env = dict(os.environ)
        self.env.update({
            "STEGA_AMQP_URL": amqp_url,
            "STEGA_EXCHANGE": self.exchange,
            "STEGA_QUEUE_MODE": mode,
            "STEGA_DATA_DIR": str(tmp_path / "data"),
            "STEGA_LOG_LEVEL": "info",
        })
        self.env.update(extra_env or {})
        self.processes = {}
        # The services' queues are named after the service, not the exchange: start each
        # stack without what earlier tests left in them.
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = conn.channel()
            for service in ("returns", "correlations"):
                for queue in (f"{service}.events", f"{service}.events.dead"):
                    channel.queue_delete(queue=queue)
        finally:
            conn.close()

    def start(self, name, alias=None):
        """Starts binary `name` (as `alias`, for a second replica) and waits until it is ready."""
        env = dict(self.env, STEGA_HTTP_PORT=str(free_port()))
        process = Process(name, env, self.tmp_path, alias)
        self.processes[alias or name] = process
        return process.ready()

    @property
    def api(self):
        return self.processes["returns-api"]

    @property
    def worker(self):
        return self.processes["returns-worker"]

    def stop(self):
        codes = {name: p.terminate() for name, p in self.processes.items()}
        for p in self.processes.values():
            p.kill()
        return codes


@pytest.fixture
def stack_factory(amqp_url, tmp_path):
    stacks = []

    def make(**kwargs):
        stack = Stack(amqp_url, tmp_path, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


class SeedConsumer:
    """A consumer written like the seed note's pika snippet: an exclusive, server-named
    queue bound to the given routing keys, consumed with auto-ack. The exchange is durable
    (DESIGN.md's wire details), so it is declared with durable=True."""

    def __init__(self, amqp_url, exchange, routing_keys, exchange_type="direct"):
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(exchange=exchange, exchange_type=exchange_type, durable=True)
        result = self.channel.queue_declare(queue="", exclusive=True)
        self.queue = result.method.queue
        for key in routing_keys:
            self.channel.queue_bind(exchange=exchange, queue=self.queue, routing_key=key)
        self.messages = []

        def callback(ch, method, properties, body):
            self.messages.append((method, properties, json.loads(body)))

        self.channel.basic_consume(queue=self.queue, on_message_callback=callback, auto_ack=True)

    def wait_for(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if predicate(m)]
            if found:
                return found[0]
            self.conn.process_data_events(time_limit=0.1)
        raise AssertionError(f"no matching message in {timeout}s; got {[(m[0].routing_key, m[2]) for m in self.messages]}")

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


@pytest.fixture
def seed_consumer(amqp_url):
    consumers = []

    def make(exchange, routing_keys, **kwargs):
        consumer = SeedConsumer(amqp_url, exchange, routing_keys, **kwargs)
        consumers.append(consumer)
        return consumer

    yield make
    for consumer in consumers:
        consumer.close()


def postgres_script(*args):
    """scripts/postgres.sh against the test server (STEGA_TEST_POSTGRES_DIR)."""
    out = subprocess.run([str(ROOT / "scripts/postgres.sh"), args[0], os.environ["STEGA_TEST_POSTGRES_DIR"], *args[1:]],
                         check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


@pytest.fixture
def postgres_db():
    """Makes empty databases on the throw-away PostgreSQL that `make test` runs; returns
    a function giving the STEGA_DATABASE_URL of a new one. Dropped afterwards: a test names
    it before `stack_factory`, so that its processes stop first."""
    if not os.environ.get("STEGA_TEST_POSTGRES_DIR"):
        pytest.skip("STEGA_TEST_POSTGRES_DIR is not set: run through `make test`, which starts PostgreSQL")
    made = []

    def make():
        name = f"e2e_{uuid.uuid4().hex[:10]}"
        made.append(name)
        return postgres_script("newdb", name) + "?sslmode=disable"

    yield make
    for name in made:
        try:
            postgres_script("dropdb", name)
        except subprocess.CalledProcessError:
            pass


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request):
    """The environment that puts the services' stores on each engine in turn: SQLite files
    (the default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    return {"STEGA_DATABASE_URL": request.getfixturevalue("postgres_db")()}


def publish_unhandleable_returns(amqp_url, exchange, operation):
    """Publishes with pika, under `operation`, a returns_calculated the correlations-worker can
    never handle (a date that does not exist): it is dead-lettered, and the worker raises
    operation_failed for it."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
        channel.basic_publish(exchange, "returns.events.returns_calculated",
                              json.dumps({"symbol": "BAD", "returns": [{"date": "2024-13-01", "value": 0.1}]}),
                              pika.BasicProperties(message_id=str(uuid.uuid4()), correlation_id=operation,
                                                   type="returns_calculated", app_id="returns",
                                                   content_type="application/json", delivery_mode=2))
    finally:
        conn.close()

