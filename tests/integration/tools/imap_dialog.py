#!/usr/bin/env python3
"""A scripted IMAP client for test_imap.sh: connects to --port, optionally upgrades with
STARTTLS (--starttls, verifying nothing: the proxy's test certificate), sends --send as
raw bytes (\\r\\n escapes allowed) and prints everything received until the server closes
or --wait seconds pass with nothing new."""
import argparse
import socket
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--send", action="append", default=[])
    ap.add_argument("--wait", type=float, default=2.0)
    a = ap.parse_args()
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.settimeout(a.wait)
    got = b""
    try:
        got += s.recv(65536)
        for chunk in a.send:
            s.sendall(chunk.encode("latin-1").decode("unicode_escape").encode("latin-1"))
            while True:
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    break
                if not d:
                    raise EOFError
                got += d
    except (EOFError, ConnectionResetError, socket.timeout):
        pass
    sys.stdout.write(got.decode("latin-1"))


if __name__ == "__main__":
    main()
