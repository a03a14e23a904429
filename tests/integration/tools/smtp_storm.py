#!/usr/bin/env python3
"""Many short SMTP sessions through the proxy, of several kinds, a few at a time.

  smtp_storm.py --port P [--dead-port Q] --count N [--parallel K] [--tls-ca CA]
                [--kinds k1,k2,...] [--timeout SEC] [--pp-v1]

Kinds (taken in turn, session i gets kinds[i % len(kinds)]):
  ok          EHLO, MAIL, RCPT, DATA, a small message, QUIT: the 250 after the message
              and the 221 are required
  starttls    (with --tls-ca) EHLO, STARTTLS, EHLO inside TLS, one message, QUIT
  abort_data  EHLO, MAIL, RCPT, DATA, half a message, then the socket is closed
  abort_ehlo  the greeting, then "EHL" and the socket is closed (mid-command)
  abort_now   connect and close at once, before the greeting
  rset        EHLO, MAIL, RSET, then a reset (SO_LINGER 0) instead of QUIT
  dead        on --dead-port (a route whose upstream is unreachable): the 421 4.4.1
              reply and the close are required
  echo        not SMTP: a line to a tcp route whose upstream echoes; it must come back
  pp_garbage  (a PROXY protocol route) a line that is no PROXY header: the proxy must close
              without sending a byte
--pp-v1 sends a PROXY protocol v1 header (TCP4 192.0.2.9:40000 -> 127.0.0.1:25) first in
every session but pp_garbage.
Prints one JSON line: counts per kind and result, and the first few failures; the exit
status is 1 when a session that must succeed did not.
"""
import argparse
import json
import socket
import ssl
import struct
import sys
import threading


def lines_until(f, code_prefix=None):
    """Reads one SMTP reply (multi-line aware); returns (code, text)."""
    text = []
    while True:
        line = f.readline()
        if not line:
            raise EOFError("connection closed while waiting for a reply")
        line = line.decode("latin-1").rstrip("\r\n")
        text.append(line)
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), "\n".join(text)


def cmd(sock, f, line, want):
    sock.sendall(line.encode() + b"\r\n")
    code, text = lines_until(f)
    if code // 100 != want:
        raise RuntimeError("%r: got %s" % (line, text))
    return text


MSG = b"Subject: storm\r\nFrom: a@client.test\r\n\r\nline one\r\n..dot line\r\nlast\r\n"


def session(kind, i, a):
    port = a.dead_port if kind == "dead" else a.port
    s = socket.create_connection(("127.0.0.1", port), a.timeout)
    s.settimeout(a.timeout)
    try:
        if kind == "pp_garbage":
            s.sendall(b"HELLO I AM NO HEADER\r\n")
            got = s.recv(100)
            if got != b"":
                raise RuntimeError("pp_garbage: got %r, want a close" % got)
            return
        if a.pp_v1:
            s.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n")
        if kind == "abort_now":
            return
        if kind == "echo":
            line = b"ping-%d\n" % i
            s.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = s.recv(100)
                if not chunk:
                    break
                got += chunk
            if got != line:
                raise RuntimeError("echo: got %r" % got)
            return
        f = s.makefile("rb")
        code, text = lines_until(f)
        if kind == "dead":
            if code != 421 or " 4.4.1 " not in text:
                raise RuntimeError("dead upstream: greeting %s" % text)
            if f.read(1) != b"":
                raise RuntimeError("dead upstream: not closed after %s" % text)
            return
        if code != 220:
            raise RuntimeError("greeting: %s" % text)
        if kind == "abort_ehlo":
            s.sendall(b"EHL")
            return
        cmd(s, f, "EHLO storm%d.client.test" % i, 2)
        if kind == "starttls":
            cmd(s, f, "STARTTLS", 2)
            ctx = ssl.create_default_context(cafile=a.tls_ca)
            ctx.check_hostname = False
            s = ctx.wrap_socket(s, server_hostname="localhost")
            f = s.makefile("rb")
            cmd(s, f, "EHLO storm%d.client.test" % i, 2)
        cmd(s, f, "MAIL FROM:<a%d@client.test>" % i, 2)
        if kind == "rset":
            cmd(s, f, "RSET", 2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        cmd(s, f, "RCPT TO:<b%d@dest.test>" % i, 2)
        cmd(s, f, "DATA", 3)
        if kind == "abort_data":
            s.sendall(MSG[: len(MSG) // 2])
            return
        s.sendall(MSG + b".\r\n")
        code, text = lines_until(f)
        if code != 250:
            raise RuntimeError("after the message: %s" % text)
        cmd(s, f, "QUIT", 2)
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dead-port", type=int)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--tls-ca")
    p.add_argument("--kinds", default="ok,abort_data,abort_ehlo,abort_now,rset,dead")
    p.add_argument("--timeout", type=float, default=20)
    p.add_argument("--pp-v1", action="store_true")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    counts = {}
    failures = []
    lock = threading.Lock()
    nxt = [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                if i >= a.count:
                    return
                nxt[0] += 1
            kind = kinds[i % len(kinds)]
            try:
                session(kind, i, a)
                res = "ok"
            except Exception as e:  # noqa: BLE001 - every failure is reported
                res = "failed"
                with lock:
                    if len(failures) < 5:
                        failures.append("%s #%d: %s" % (kind, i, e))
            with lock:
                counts.setdefault(kind, {}).setdefault(res, 0)
                counts[kind][res] += 1

    threads = [threading.Thread(target=worker) for _ in range(a.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = sum(c.get("failed", 0) for c in counts.values())
    summary = " ".join("%s=%d%s" % (k, c.get("ok", 0),
                                    "/%d failed" % c["failed"] if c.get("failed") else "")
                       for k, c in sorted(counts.items()))
    print(json.dumps({"sessions": a.count, "summary": summary, "failed": bad,
                      "counts": counts, "failures": failures}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
