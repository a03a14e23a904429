#!/usr/bin/python3
"""Scripted POP3 server for the proxy's security tests. One thread per connection.

  pop3_fake.py --ready FILE --lines FILE --mode MODE [--cert FILE --key FILE]

  --ready FILE   receives the bound port once listening
  --lines FILE   every line received is appended as "plain: LINE" or "tls: LINE"
  --mode nostls  CAPA without STLS (a stripped capability list); STLS answered -ERR
  --mode inject  CAPA with STLS; STLS answered "+OK Begin TLS" and "+OK injected" in one
                 write (response injection), then TLS (needs --cert/--key)
USER/PASS get +OK, STAT "+OK 1 42", QUIT "+OK bye" and the end, anything else -ERR.
"""

import argparse
import os
import socket
import ssl
import threading


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready", required=True)
    ap.add_argument("--lines", required=True)
    ap.add_argument("--mode", choices=["nostls", "inject"], required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    lock = threading.Lock()

    def record(tag, line):
        with lock, open(a.lines, "a") as f:
            f.write("%s: %s\n" % (tag, line.decode("latin-1").rstrip("\r\n")))

    def serve(conn):
        tag = "plain"
        f = conn.makefile("rb")
        conn.sendall(b"+OK fake POP3 ready <1.2@fake.test>\r\n")
        while True:
            line = f.readline()
            if not line:
                break
            record(tag, line)
            verb = line.split(b" ")[0].strip().upper()
            if verb == b"CAPA":
                caps = b"+OK\r\nTOP\r\nUSER\r\n"
                if a.mode == "inject" and tag == "plain":
                    caps += b"STLS\r\n"
                conn.sendall(caps + b".\r\n")
            elif verb == b"STLS" and a.mode == "inject" and tag == "plain":
                conn.sendall(b"+OK Begin TLS\r\n+OK injected\r\n")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(a.cert, a.key)
                conn = ctx.wrap_socket(conn, server_side=True)
                f = conn.makefile("rb")
                tag = "tls"
                record(tag, b"# tls established")
            elif verb in (b"USER", b"PASS"):
                conn.sendall(b"+OK\r\n")
            elif verb == b"STAT":
                conn.sendall(b"+OK 1 42\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"+OK bye\r\n")
                break
            else:
                conn.sendall(b"-ERR unknown command\r\n")
        conn.close()

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    tmp = a.ready + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % s.getsockname()[1])
    os.rename(tmp, a.ready)
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: _safe(serve, c), daemon=True).start()


def _safe(fn, c):
    try:
        fn(c)
    except (OSError, ssl.SSLError):
        pass


if __name__ == "__main__":
    main()
