#!/usr/bin/env python3
"""Free TCP ports on 127.0.0.1 for the test and benchmark harnesses, out of the kernel's
ephemeral range.

A port the kernel hands out for `bind(0)` comes from the ephemeral range, the one outgoing
connections take their local ports from too: between the moment a harness learns such a
port and the moment the server it starts binds it, any client on the machine (an AMQP
connection, a test's HTTP request) may take it, and the server exits with "Address already
in use" (a CI run failed that way). The ports here are chosen at random below that range,
where no outgoing connection lands, and a process never gets the same one twice; a pair is a
port and port + 20000 (a RabbitMQ node's listener and its Erlang distribution port), both
below the range.

    python3 scripts/ports.py [--pair] [--count N] [--avoid P]...
                                # prints N (default 1) distinct ports, none of them a P
    from ports import free_port                      # in Python
"""
import random
import socket
import sys

FIRST = 10000  # above the well-known and registered services a developer's machine runs
_handed = set()
_random = random.SystemRandom()


def _ephemeral_floor():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def reserve(*ports):
    """Ports this process must not hand out (a broker's, which a restart frees for a moment)."""
    _handed.update(int(p) for p in ports)


def free_port(pair=False):
    floor = _ephemeral_floor()
    top = floor - (20000 if pair else 0)
    if top - FIRST < 1000:  # an unusual ephemeral range: fall back to the kernel's choice
        for _ in range(200):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed and port + 20000 < 65536 and (not pair or _bindable(port + 20000)):
                _handed.add(port)
                return port
        raise RuntimeError("no free port")
    for _ in range(1000):
        port = _random.randrange(FIRST, top)
        if port in _handed or (pair and port + 20000 in _handed):
            continue
        if _bindable(port) and (not pair or _bindable(port + 20000)):
            _handed.update((port, port + 20000) if pair else (port,))
            return port
    raise RuntimeError("no free port")


if __name__ == "__main__":
    args = sys.argv[1:]
    count = int(args[args.index("--count") + 1]) if "--count" in args else 1
    reserve(*(args[i + 1] for i, arg in enumerate(args) if arg == "--avoid"))
    try:
        print(" ".join(str(free_port(pair="--pair" in args)) for _ in range(count)))
    except RuntimeError as error:
        sys.exit(str(error))
