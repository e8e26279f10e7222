"""The CLI's local daemon (`stega daemon`, `stega ops`, `stega wait`) against the real
binaries: writes submitted without --wait whose outcomes arrive after a boundary restart,
the daemon's own restart, another user's access to its socket, and `stega ops --follow`
in a terminal driven through tmux."""
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

from conftest import BIN, Process, publish_unhandleable_returns, rabbitmqctl, wait_until

NOBODY = 65534


def cli_env(stack, home, boundary_url=None):
    return dict(stack.env, STEGA_HOME=str(home),
                STEGA_RETURNS_URL=stack.processes["returns-api"].url,
                STEGA_CORRELATIONS_URL=stack.processes["correlations-api"].url,
                STEGA_BOUNDARY_URL=boundary_url or stack.processes["boundary"].url)


def stega(env, *args, timeout=60, user=None, binary=None):
    command = [str(binary or BIN / "stega"), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def ops(env):
    out = stega(env, "ops", "--json")
    assert out.returncode == 0, out.stderr
    return {o["operation_id"]: o for o in json.loads(out.stdout)}


def status(env):
    out = stega(env, "daemon", "status", "--json", timeout=20)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}


def write_prices(env, tmp_path, symbol, *extra):
    csv = tmp_path / f"{symbol}.csv"
    closes = [10.0, 10.4, 10.1, 10.9]
    csv.write_text("date,close\n" + "".join(f"2024-03-{i + 4:02d},{v}\n" for i, v in enumerate(closes)))
    return stega(env, "prices", "add", symbol, "--file", str(csv), *extra)


@pytest.fixture
def shared_home():
    """A daemon home another user can look into (mode 0755), so that what keeps that user
    out is the socket's own mode, not a directory on the way; beside it a copy of the CLI
    that user can run (the build directory may be out of their reach)."""
    parent = tempfile.mkdtemp(prefix="stega-home-", dir="/tmp")
    os.chmod(parent, 0o755)
    home = os.path.join(parent, "home")
    os.mkdir(home, 0o755)
    os.chmod(home, 0o755)
    shutil.copy(BIN / "stega", os.path.join(parent, "stega"))
    os.chmod(os.path.join(parent, "stega"), 0o755)
    yield home
    shutil.rmtree(parent, ignore_errors=True)


def stop_daemon(env):
    out = stega(env, "daemon", "stop")
    return out


def test_outcomes_survive_a_boundary_restart_and_a_daemon_restart(stack_factory, tmp_path, shared_home):
    stack = stack_factory()
    for name in ("returns-worker", "correlations-worker", "boundary", "returns-api", "correlations-api"):
        stack.start(name)
    # The correlations-worker declared its durable queue; stopped, the returns wait there,
    # so the writes stay pending.
    assert stack.processes["correlations-worker"].terminate() == 0
    env = cli_env(stack, shared_home)

    # Not running yet: status says so, exit 1.
    code, _ = status(env)
    assert code == 1
    started = stega(env, "daemon", "start")
    assert started.returncode == 0, started.stderr + started.stdout
    assert "started" in started.stdout
    try:
        sock = os.path.join(shared_home, "stega.sock")
        mode = os.lstat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
        again = stega(env, "daemon", "start")
        assert again.returncode == 1 and "already runs" in again.stderr, again.stderr

        # Three writes without --wait: registered with the daemon.
        ids = []
        for symbol in ("DAA", "DBB", "DCC"):
            out = write_prices(env, tmp_path, symbol)
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith("accepted: operation ") and "stega ops" in out.stdout, out.stdout
            ids.append(out.stdout.split()[2])
        # The daemon counted their first events (prices_recorded, returns_calculated); no outcome yet.
        wait_until("the daemon saw the starting events",
                   lambda: all(ops(env).get(i, {}).get("events") == 2 for i in ids), timeout=20)
        listed = ops(env)
        assert [listed[i]["status"] for i in ids] == ["pending"] * 3
        assert [listed[i]["command"] for i in ids] == ["record_prices"] * 3

        # The boundary dies: the daemon keeps running and says it cannot reach it.
        boundary = stack.processes["boundary"]
        port = boundary.port
        boundary.kill()
        wait_until("status says unreachable", lambda: status(env) [1].get("connected") is False, timeout=10)
        human = stega(env, "daemon", "status")
        assert human.returncode == 0 and "unreachable" in human.stdout and "retrying" in human.stdout, human.stdout

        # A new boundary on the same port: it never saw the starting events.
        reborn = Process("boundary", dict(stack.env, STEGA_HTTP_PORT=str(port)), tmp_path, alias="boundary-2").ready()
        stack.processes["boundary-2"] = reborn
        wait_until("the daemon reconnected", lambda: status(env)[1].get("connected") is True, timeout=10)

        stack.start("correlations-worker")
        worker_ready = time.monotonic()
        wait_until("three succeeded", lambda: [ops(env)[i]["status"] for i in ids] == ["succeeded"] * 3, timeout=10)
        shown_after = time.monotonic() - worker_ready
        listed = ops(env)
        assert [listed[i]["events"] for i in ids] == [3, 3, 3]
        # The boundary's own verdict: it saw only the last event of each, so it cannot say succeeded.
        for i in ids:
            r = requests.get(f"{reborn.url}/operations/{i}", timeout=5)
            assert r.status_code == 404 or r.json()["status"] != "succeeded", r.text
        print(f"three outcomes shown {shown_after:.2f} s after the correlations-worker was ready")

        # The table: one row per operation with its duration.
        table = stega(env, "ops")
        assert table.returncode == 0
        rows = [line.split() for line in table.stdout.splitlines()[2:]]
        assert {r[0] for r in rows} >= set(ids)
        assert all(r[3] == "succeeded" and r[4] == "3" and r[6] == "s" for r in rows if r[0] in ids), table.stdout

        # Stopped: the outcomes are still listed (read from operations.sqlite, no daemon).
        stopped = stop_daemon(env)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not os.path.exists(sock)
        assert {i: ops(env)[i]["status"] for i in ids} == {i: "succeeded" for i in ids}
        code, body = status(env)
        assert code == 1 and body["running"] is False
        assert stega(env, "daemon", "stop").returncode == 1

        # Started again: still there, and `stega wait` answers from what the daemon recorded.
        assert stega(env, "daemon", "start").returncode == 0
        assert {i: ops(env)[i]["status"] for i in ids} == {i: "succeeded" for i in ids}
        waited = stega(env, "wait", ids[0], "--timeout", "10")
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.splitlines()[0] == f"operation {ids[0]}"
        assert waited.stdout.splitlines()[-1] == "succeeded: 3 events"

        # Another user cannot use the socket, though the directory lets them see it.
        theirs = os.path.join(os.path.dirname(shared_home), "stega")
        other = stega(env, "daemon", "status", user=NOBODY, binary=theirs)
        assert other.returncode == 1 and "permission denied" in other.stderr, other.stderr + other.stdout
        other = stega(env, "ops", "--follow", user=NOBODY, timeout=10, binary=theirs)
        assert other.returncode == 1 and "permission denied" in other.stderr, other.stderr + other.stdout
    finally:
        stop_daemon(env)


def boundary_queues():
    """{name: (messages, consumers, arguments)} of the broker's boundary.* queues."""
    out = rabbitmqctl("list_queues", "name", "messages", "consumers", "arguments")
    rows = [line.split("\t") for line in out.splitlines()]
    return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows if len(r) == 4 and r[0].startswith("boundary.")}


def test_an_outcome_published_while_the_boundary_is_down_is_not_missed(stack_factory, tmp_path):
    """The boundary's queue outlives it: the correlations_updated that ends an operation,
    published while the boundary is dead, waits for the next boundary on that host and port,
    and the daemon (which saw the starting events) resolves the operation."""
    stack = stack_factory(extra_env={"STEGA_BOUNDARY_QUEUE_EXPIRES_S": "10"})
    for name in ("returns-worker", "correlations-worker", "boundary", "returns-api", "correlations-api"):
        stack.start(name)
    assert stack.processes["correlations-worker"].terminate() == 0
    boundary = stack.processes["boundary"]
    queue = f"boundary.{os.uname().nodename}-{boundary.port}.events"
    messages, consumers, arguments = boundary_queues()[queue]
    assert consumers == 1 and "x-expires" in arguments and "10000" in arguments and "drop-head" in arguments, arguments
    home = tmp_path / "home"
    env = cli_env(stack, home)
    assert stega(env, "daemon", "start").returncode == 0
    try:
        out = write_prices(env, tmp_path, "DWN")
        assert out.returncode == 0, out.stderr
        op = out.stdout.split()[2]
        wait_until("the starting events", lambda: ops(env).get(op, {}).get("events") == 2, timeout=20)

        # The boundary dies; the correlations-worker comes back and publishes the last event.
        boundary.kill()
        stack.start("correlations-worker")
        wait_until("the last event waits in the boundary's queue", lambda: boundary_queues()[queue][:2] == (1, 0),
                   timeout=20)
        assert ops(env)[op]["status"] == "pending"

        # The next boundary on that port reads it: the daemon resolves the operation.
        reborn = Process("boundary", dict(stack.env, STEGA_HTTP_PORT=str(boundary.port)), tmp_path,
                         alias="boundary-2").ready()
        stack.processes["boundary-2"] = reborn
        wait_until("succeeded", lambda: ops(env)[op]["status"] == "succeeded", timeout=15)
        assert ops(env)[op]["events"] == 3
        assert boundary_queues()[queue][:2] == (0, 1)
        seen = requests.get(f"{reborn.url}/operations/{op}", timeout=5).json()
        assert [e["routing_key"] for e in seen["events"]] == ["correlations.events.correlations_updated"], seen

        # Nobody reads it any more: the broker deletes it after STEGA_BOUNDARY_QUEUE_EXPIRES_S.
        assert reborn.terminate() == 0
        wait_until("the queue expired", lambda: queue not in boundary_queues(), timeout=30)
    finally:
        stop_daemon(env)


def test_wait_through_the_daemon_prints_what_the_direct_wait_prints(stack_factory, tmp_path):
    stack = stack_factory()
    for name in ("returns-worker", "correlations-worker", "boundary", "returns-api", "correlations-api"):
        stack.start(name)
    env = cli_env(stack, tmp_path / "home")
    direct = write_prices(env, tmp_path, "WDA", "--wait")
    assert direct.returncode == 0, direct.stderr
    assert stega(env, "daemon", "start").returncode == 0
    try:
        through = write_prices(env, tmp_path, "WDB", "--wait")
        assert through.returncode == 0, through.stderr

        def shape(out):
            lines = out.stdout.splitlines()
            return [lines[0].split()[0]] + sorted(lines[1:-1]) + [lines[-1]]
        assert shape(direct) == shape(through), (direct.stdout, through.stdout)
        as_json = write_prices(env, tmp_path, "WDC", "--wait", "--json")
        body = json.loads(as_json.stdout)
        assert body["status"] == "succeeded" and len(body["events"]) == 3
        assert {e["type"] for e in body["events"]} == {"event"}
        assert all(e["correlation_id"] == body["operation_id"] for e in body["events"])
        # Both recorded (the --wait ones through the daemon).
        listed = ops(env)
        assert listed[body["operation_id"]]["status"] == "succeeded"
        # Hostile lines on the socket: an error line each, the daemon goes on.
        import socket as sk
        with sk.socket(sk.AF_UNIX) as s:
            s.connect(str(tmp_path / "home" / "stega.sock"))
            s.sendall(b'not json\n{"request":"launch"}\n{"request":"wait","operation_id":"x"}\n{"request":"status"}\n')
            answers = b""
            while answers.count(b"\n") < 4:
                answers += s.recv(65536)
        kinds = [json.loads(line)["type"] for line in answers.splitlines()]
        assert kinds == ["error", "error", "error", "status"], answers
        assert status(env)[0] == 0
    finally:
        stop_daemon(env)


def test_a_killed_daemon_leaves_a_socket_that_the_next_start_replaces(stack_factory, tmp_path):
    stack = stack_factory()
    boundary = stack.start("boundary")
    env = dict(stack.env, STEGA_HOME=str(tmp_path / "home"), STEGA_BOUNDARY_URL=boundary.url)
    assert stega(env, "daemon", "start").returncode == 0
    pid = int((tmp_path / "home" / "daemon.pid").read_text())
    os.kill(pid, 9)
    wait_until("the daemon is gone", lambda: not os.path.exists(f"/proc/{pid}") or
               open(f"/proc/{pid}/cmdline", "rb").read() == b"", timeout=10)
    assert stat.S_ISSOCK(os.lstat(tmp_path / "home" / "stega.sock").st_mode)
    code, body = status(env)
    assert code == 1 and "did not stop" in body["error"], body
    not_running = stega(env, "ops", "--follow", timeout=10)
    assert not_running.returncode == 1 and "not running" in not_running.stderr
    # Starts at once over the stale socket: one daemon, the others refused, the winner's socket
    # left in place (a start that saw the socket stale must not remove the new daemon's). Several
    # rounds, each over the socket the last winner left when killed: the race is narrow.
    for round in range(6):
        starts = [subprocess.Popen([str(BIN / "stega"), "daemon", "start"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(timeout=30), *p.communicate()) for p in starts]
        assert sorted(r[0] for r in results) == [0, 1, 1], (round, results)
        winner = next(r for r in results if r[0] == 0)
        for loser in (r for r in results if r[0] == 1):
            assert "already runs" in loser[2], (round, loser)
        code, body = status(env)
        assert code == 0 and f"pid {body['pid']})" in winner[1], (round, body, winner)
        if round < 5:
            pid = body["pid"]
            os.kill(pid, 9)
            wait_until("the daemon is gone", lambda: not os.path.exists(f"/proc/{pid}") or
                       open(f"/proc/{pid}/cmdline", "rb").read() == b"", timeout=10)
    assert stega(env, "daemon", "stop").returncode == 0
    # The socket path taken by something that is not a socket: a clear refusal.
    (tmp_path / "home" / "stega.sock").write_text("not a socket")
    taken = stega(env, "daemon", "start")
    assert taken.returncode == 1 and "not a socket" in taken.stderr, taken.stderr
    # No daemon: --wait and wait go to the boundary directly.
    unknown = str(uuid.uuid4())
    direct = stega(env, "wait", unknown, "--timeout", "1")
    assert direct.returncode == 2 and "no outcome" in direct.stderr, direct.stderr


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=20)


def test_ops_follow_prints_outcomes_live_in_a_terminal(stack_factory, tmp_path, amqp_url):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (make test installs it)")
    stack = stack_factory()
    for name in ("returns-worker", "correlations-worker", "boundary", "returns-api", "correlations-api"):
        stack.start(name)
    env = cli_env(stack, tmp_path / "home")
    assert stega(env, "daemon", "start").returncode == 0
    session = f"stega-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "follow.sh"
    script.write_text("#!/bin/sh\n" + "".join(f"export {k}='{v}'\n" for k, v in env.items()
                                              if k.startswith("STEGA_") and "'" not in v)
                      + f"exec {BIN / 'stega'} ops --follow\n")
    script.chmod(0o755)
    try:
        # Window 0 idles and is the current one; window 1 follows (a bell there is flagged).
        assert tmux("new-session", "-d", "-s", session, "-x", "220", "-y", "40", "sleep 600").returncode == 0
        assert tmux("new-window", "-d", "-t", f"{session}:1", str(script)).returncode == 0

        def pane():
            return tmux("capture-pane", "-p", "-t", f"{session}:1").stdout
        wait_until("the follower started", lambda: "following outcomes" in pane(), timeout=10)

        accepted = write_prices(env, tmp_path, "TMX")
        assert accepted.returncode == 0, accepted.stderr
        op = accepted.stdout.split()[2]
        wait_until("the success shown", lambda: any(op in line and "succeeded" in line for line in pane().splitlines()),
                   timeout=15)
        line = next(line for line in pane().splitlines() if op in line)
        assert "record_prices" in line and "3 events" in line, line
        assert tmux("display-message", "-p", "-t", f"{session}:1", "#{window_bell_flag}").stdout.strip() == "0"

        # A failing operation: a returns_calculated the correlations-worker can never handle.
        failing = str(uuid.uuid4())
        publish_unhandleable_returns(amqp_url, stack.exchange, failing)
        waited = stega(env, "wait", failing, "--timeout", "20")
        assert waited.returncode == 1 and waited.stdout.splitlines()[-1].startswith("failed:"), waited.stdout
        wait_until("the failure shown", lambda: any(failing in line and "failed" in line for line in pane().splitlines()),
                   timeout=10)
        # The bell rang in the follower's window.
        assert tmux("display-message", "-p", "-t", f"{session}:1", "#{window_bell_flag}").stdout.strip() == "1"
        (tmp_path / "pane.txt").write_text(pane())
    finally:
        tmux("kill-session", "-t", session)
        stop_daemon(env)


def test_a_daemon_refuses_a_connection_from_another_user(shared_home):
    # The socket's mode keeps other users out; root is not kept out by modes, so the daemon
    # also checks who connects (SO_PEERCRED). A daemon of `nobody`, asked by root:
    os.chown(shared_home, NOBODY, NOBODY)
    theirs = os.path.join(os.path.dirname(shared_home), "stega")
    env = dict(os.environ, STEGA_HOME=shared_home, STEGA_BOUNDARY_URL="http://127.0.0.1:9")
    started = stega(env, "daemon", "start", user=NOBODY, binary=theirs)
    assert started.returncode == 0, started.stderr
    try:
        assert stega(env, "daemon", "status", user=NOBODY, binary=theirs).returncode == 0
        refused = stega(env, "daemon", "status")
        assert refused.returncode == 1 and "belongs to another user" in refused.stderr, refused.stderr
        log = open(os.path.join(shared_home, "daemon.log")).read()
        assert "refused a connection from another user" in log
    finally:
        stopped = stega(env, "daemon", "stop", user=NOBODY, binary=theirs)
        assert stopped.returncode == 0, stopped.stderr
