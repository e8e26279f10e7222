"""The boundary's WebSocket with real clients: Python `websockets` for the protocol, raw
sockets for frames a library would never send."""
import asyncio
import base64
import json
import os
import socket
import struct

import requests
import websockets



async def receive_until(ws, predicate, timeout=20):
    seen = []
    async def loop():
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if predicate(message):
                return seen
    return await asyncio.wait_for(loop(), timeout)


def test_pattern_and_operation_subscriptions_and_a_late_subscriber(stack_factory):
    stack = stack_factory()
    stack.start("returns-worker")
    stack.start("correlations-worker")
    boundary = stack.start("boundary")
    api = stack.start("returns-api")
    ws_url = boundary.url.replace("http://", "ws://") + "/ws"

    async def scenario():
        async with websockets.connect(ws_url) as watcher:
            await watcher.send(json.dumps({"action": "subscribe", "pattern": "returns.events.*"}))
            assert json.loads(await watcher.recv()) == {"type": "subscribed", "pattern": "returns.events.*"}
            r = requests.post(api.url + "/prices", json={"symbol": "WS", "prices": [
                {"date": "2024-01-02", "close": 10.0}, {"date": "2024-01-03", "close": 11.0}]}, timeout=10)
            op = r.json()["operation_id"]
            async with websockets.connect(ws_url) as follower:
                await follower.send(json.dumps({"action": "subscribe", "operation": op}))
                assert json.loads(await follower.recv()) == {"type": "subscribed", "operation": op}
                followed = await receive_until(follower, lambda m: m["type"] == "operation")
            assert followed[-1] == {"type": "operation", "operation_id": op, "status": "succeeded"}
            keys = [m["routing_key"] for m in followed[:-1]]
            assert keys == ["returns.events.prices_recorded", "returns.events.returns_calculated",
                            "correlations.events.correlations_updated"]
            assert all(m["type"] == "event" and m["correlation_id"] == op and m["timestamp"].endswith("Z")
                       for m in followed[:-1])
            # The pattern subscriber saw both returns events, and nothing of correlations.
            seen = await receive_until(watcher, lambda m: m.get("routing_key") == "returns.events.returns_calculated")
            assert [m["routing_key"] for m in seen] == ["returns.events.prices_recorded", "returns.events.returns_calculated"]
            assert seen[1]["payload"] == {"symbol": "WS", "returns": [{"date": "2024-01-03", "value": 0.10000000000000009}]}
            # A late subscriber gets the events and the outcome at once; unsubscribe is answered.
            async with websockets.connect(ws_url) as late:
                await late.send(json.dumps({"action": "subscribe", "operation": op}))
                late_seen = await receive_until(late, lambda m: m["type"] == "operation", timeout=5)
                assert [m["type"] for m in late_seen] == ["subscribed", "event", "event", "event", "operation"]
                await late.send(json.dumps({"action": "unsubscribe", "operation": op}))
                assert json.loads(await late.recv()) == {"type": "unsubscribed", "operation": op}
                await late.send("not json")
                assert json.loads(await late.recv())["type"] == "error"
                await late.send(json.dumps({"action": "subscribe", "operation": "nope"}))
                assert json.loads(await late.recv())["type"] == "error"
                # ping/pong through the library.
                pong = await late.ping(b"hi")
                await asyncio.wait_for(pong, 5)

    asyncio.run(scenario())
    assert requests.get(boundary.url + "/ws", timeout=5).json()["error"]["code"] == "invalid_upgrade"
    assert set(stack.stop().values()) == {0}


def raw_connect(url):
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += s.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return s


def frame(opcode, payload, mask=True, fin=True, length=None):
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask else 0
    if length < 126:
        head += bytes([m | length])
    elif length < 65536:
        head += bytes([m | 126]) + struct.pack(">H", length)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(s):
    """Reads frames until a close frame; returns its code (None if the socket just ended)."""
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return None
        if not chunk:
            return None
        data += chunk
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            start = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            if length == 126:
                length = struct.unpack(">H", data[2:4])[0]
            elif length == 127:
                length = struct.unpack(">Q", data[2:10])[0]
            if len(data) < start + length:
                break
            payload, data = data[start:start + length], data[start + length:]
            if opcode == 8:
                return struct.unpack(">H", payload[:2])[0]


def test_bad_frames_get_the_right_close_codes(stack_factory):
    stack = stack_factory()
    boundary = stack.start("boundary")
    cases = [
        ("unmasked", frame(0x1, b'{"action":"subscribe"}', mask=False), 1002),
        ("oversized", frame(0x1, b"x" * 70000), 1009),
        ("invalid UTF-8", frame(0x1, b"\xc3\x28"), 1007),
        ("unknown opcode", frame(0x3, b"?"), 1002),
        ("binary", frame(0x2, b"\x00\x01"), 1003),
    ]
    for name, data, code in cases:
        s = raw_connect(boundary.url)
        s.sendall(data)
        assert close_code(s) == code, name
        s.close()
    # A fragmented text message is reassembled; a ping between fragments is answered.
    s = raw_connect(boundary.url)
    s.sendall(frame(0x1, b'{"action":"subscribe",', fin=False) + frame(0x9, b"p")
              + frame(0x0, b'"pattern":"#"}', fin=True))
    data = b""
    while b"subscribed" not in data:
        data += s.recv(4096)
    assert data.startswith(b"\x8a\x01p")  # the pong first
    s.sendall(frame(0x8, struct.pack(">H", 1000)))
    assert close_code(s) == 1000
    s.close()
    # A client still connected at SIGTERM is told 1001 (going away); the process exits 0.
    s = raw_connect(boundary.url)
    boundary.proc.send_signal(__import__("signal").SIGTERM)
    assert close_code(s) == 1001
    s.close()
    assert boundary.proc.wait(10) == 0
