"""The `stega` CLI against real processes: writes that wait, reads as tables and JSON,
live events, the catalog, and errors as one clear line."""
import json
import subprocess
import time

import numpy as np

from conftest import BIN


def stega(stack, *args, timeout=60):
    env = dict(stack.env, STEGA_RETURNS_URL=stack.processes["returns-api"].url,
               STEGA_CORRELATIONS_URL=stack.processes["correlations-api"].url,
               STEGA_BOUNDARY_URL=stack.processes["boundary"].url)
    return subprocess.run([str(BIN / "stega"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_end_to_end(stack_factory, tmp_path):
    stack = stack_factory()
    for name in ("returns-worker", "correlations-worker", "boundary", "returns-api", "correlations-api"):
        stack.start(name)
    env = dict(stack.env, STEGA_BOUNDARY_URL=stack.processes["boundary"].url)
    watch = subprocess.Popen([str(BIN / "stega"), "watch", "returns.events.*"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the watcher subscribes
        closes = {"AAA": [10.0, 10.5, 10.2, 10.8, 11.0, 10.9], "BBB": [20.0, 20.2, 20.9, 20.5, 21.5, 21.4]}
        for symbol, values in closes.items():
            csv = tmp_path / f"{symbol}.csv"
            csv.write_text("date,close\n" + "".join(f"2024-01-{i + 2:02d},{v}\n" for i, v in enumerate(values)))
            done = stega(stack, "prices", "add", symbol, "--file", str(csv), "--wait")
            assert done.returncode == 0, done.stderr
            assert "succeeded: 3 events" in done.stdout, done.stdout  # plain lines when not on a terminal
            assert "  event returns.events.prices_recorded" in done.stdout

        out = stega(stack, "returns", "AAA", "--json")
        values = [r["value"] for r in json.loads(out.stdout)["returns"]]
        c = np.array(closes["AAA"])
        np.testing.assert_allclose(values, c[1:] / c[:-1] - 1, rtol=1e-12)
        table = stega(stack, "returns", "AAA").stdout.splitlines()
        assert table[0].split() == ["date", "simple", "return"] and len(table) == 2 + 5

        summary = json.loads(stega(stack, "summary", "AAA", "--json").stdout)
        assert summary["count"] == 5

        window = stega(stack, "windows", "add", "4", "--wait", "--json")
        assert window.returncode == 0, window.stderr
        assert json.loads(window.stdout)["status"] == "succeeded"
        matrix = json.loads(stega(stack, "correlations", "AAA", "BBB", "--window", "4", "--json").stdout)
        ra = c[1:] / c[:-1] - 1
        b = np.array(closes["BBB"])
        rb = b[1:] / b[:-1] - 1
        np.testing.assert_allclose(matrix["matrix"][0][1], np.corrcoef(ra[-4:], rb[-4:])[0, 1], rtol=1e-9)
        human = stega(stack, "correlations", "AAA", "BBB", "--window", "4").stdout
        assert "window 4, as of 2024-01-07" in human

        op = json.loads(window.stdout)["operation_id"]
        status = stega(stack, "operation", op)
        assert status.stdout.startswith(f"operation {op}: succeeded")
        catalog = stega(stack, "events", "--json")
        entries = {e["routing_key"]: e for e in json.loads(catalog.stdout)}
        assert "returns-worker" in entries["returns.events.prices_recorded"]["consumers"]
        assert "POST /prices" in entries["correlations.events.correlations_updated"]["resolves"]

        # Errors: one line, exit 1.
        bad = stega(stack, "returns", "lower")
        assert bad.returncode == 1 and bad.stderr.strip().startswith("stega: 422 invalid_symbol:")
        assert len(bad.stderr.strip().splitlines()) == 1
        missing = stega(stack, "correlations", "AAA", "--window", "7")
        assert missing.returncode == 1 and "404 unknown_window" in missing.stderr
        gone = subprocess.run([str(BIN / "stega"), "returns", "AAA"], env=dict(env, STEGA_RETURNS_URL="http://127.0.0.1:9"),
                              capture_output=True, text=True)
        assert gone.returncode == 1 and "cannot reach" in gone.stderr
    finally:
        watch.terminate()
        lines = watch.communicate(timeout=10)[0].splitlines()
    # The watcher printed one line per returns event: 2 writes x (prices_recorded + returns_calculated).
    keys = [line.split()[1] for line in lines]
    assert keys.count("returns.events.prices_recorded") == 2 and keys.count("returns.events.returns_calculated") == 2
    assert not any(k.startswith("correlations.") for k in keys)
