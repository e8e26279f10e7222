"""amqps:// with certificate verification, against the throw-away broker's TLS listener
(scripts/test.sh makes a certificate authority for each run with scripts/test-ca.sh; the
server certificate names DNS:localhost only)."""
import os
import subprocess
import urllib.parse

import pytest
import requests

from conftest import ROOT, Process, free_port, rabbitmqctl, wait_until
from test_returns_e2e import PRICES, post_prices, wait_for_returns


@pytest.fixture
def amqps():
    url, ca = os.environ.get("STEGA_TEST_AMQPS_URL"), os.environ.get("STEGA_TEST_TLS_CA")
    if not url or not ca:
        pytest.skip("STEGA_TEST_AMQPS_URL is not set: run through `make test`, which starts a TLS listener")
    return url, ca


def tls_connections(port):
    rows = [line.split("\t") for line in rabbitmqctl("list_connections", "port", "ssl").splitlines()[1:]]
    return [ssl for p, ssl in rows if p == str(port)]


def test_services_talk_to_the_broker_over_verified_tls(amqps, stack_factory, seed_consumer):
    url, ca = amqps
    port = urllib.parse.urlsplit(url).port
    stack = stack_factory(extra_env={"STEGA_AMQP_URL": url, "STEGA_AMQP_CACERT": ca})
    # The seed consumer listens on the plain listener of the same broker: what it sees crossed TLS.
    watcher = seed_consumer(stack.exchange, ["returns.events.returns_calculated"])
    stack.start("returns-worker")
    api = stack.start("returns-api")
    response = post_prices(api, "TLS", PRICES)
    assert response.status_code == 202, response.text
    _, props, body = watcher.wait_for(lambda m: m[2]["symbol"] == "TLS")
    assert props.correlation_id == response.json()["operation_id"]
    assert len(wait_for_returns(api, "TLS", 4)["returns"]) == 4
    # The api's publisher, the worker's consumer and its publisher: all on the TLS port, all TLS.
    ssl = tls_connections(port)
    assert len(ssl) >= 3 and set(ssl) == {"true"}, ssl


@pytest.mark.parametrize("case", ["unknown CA", "host name not in the certificate"])
def test_a_broker_certificate_that_does_not_verify_is_refused_and_nothing_accepted_is_lost(
        amqps, stack_factory, seed_consumer, tmp_path, case):
    url, ca = amqps
    if case == "unknown CA":
        # Another authority, made here: the broker's certificate is not signed by it.
        subprocess.run([str(ROOT / "scripts/test-ca.sh"), str(tmp_path / "other-ca"), "another CA"], check=True)
        bad = {"STEGA_AMQP_URL": url, "STEGA_AMQP_CACERT": str(tmp_path / "other-ca" / "ca.pem")}
        expected = "SSL peer cert verification failed"
    else:
        bad = {"STEGA_AMQP_URL": url.replace("@localhost:", "@127.0.0.1:"), "STEGA_AMQP_CACERT": ca}
        expected = "SSL hostname verification failed"
    stack = stack_factory(extra_env=bad)
    watcher = seed_consumer(stack.exchange, ["returns.events.prices_recorded"])
    api = Process("returns-api", dict(stack.env, STEGA_HTTP_PORT=str(free_port())), tmp_path)
    stack.processes["returns-api"] = api
    wait_until("the refused TLS handshake in the log", lambda: expected in api.log_text())
    assert requests.get(api.url + "/readyz", timeout=2).status_code == 503
    # A write is still accepted (the outbox keeps it) but nothing reaches the broker.
    response = post_prices(api, "HELD", PRICES)
    assert response.status_code == 202, response.text
    with pytest.raises(AssertionError):
        watcher.wait_for(lambda m: True, timeout=2)
    # With the right settings, the same data directory publishes what was accepted.
    assert api.terminate() == 0
    good = Process("returns-api", dict(stack.env, STEGA_AMQP_URL=url, STEGA_AMQP_CACERT=ca,
                                       STEGA_HTTP_PORT=str(free_port())), tmp_path, alias="returns-api-fixed")
    stack.processes["returns-api-fixed"] = good
    good.ready()
    _, props, body = watcher.wait_for(lambda m: m[2]["symbol"] == "HELD")
    assert props.correlation_id == response.json()["operation_id"]
