#!/usr/bin/env python3
"""Prints a TCP port that is free on 127.0.0.1 now (and, with --pair, whose +20000 is free too)."""
import socket
import sys

def free(port=0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        return s.getsockname()[1]

if __name__ == "__main__":
    pair = "--pair" in sys.argv
    for _ in range(200):
        port = free()
        if port and port < 45000 and (not pair or free(port + 20000)):
            print(port)
            sys.exit(0)
    sys.exit("no free port")
