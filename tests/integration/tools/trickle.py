#!/usr/bin/python3
"""Slow-client abuse and the latency of legitimate SMTP sessions beside it (test_trickle.sh).

  trickle.py legit --connect HOST:PORT --sessions N --tag TAG [--direct HOST:PORT]
                   [--timeout SEC]
      N SMTP sessions one after the other with smtplib (EHLO, MAIL, RCPT, DATA of a small
      message whose Message-ID is <TAG-i@client.test>, QUIT). Prints one JSON line: ok (the
      sessions that got 250 for their message and 221 for QUIT), failed (the first errors),
      and the latency of each good session in seconds: p50, p95, max. With --direct
      HOST:PORT (the upstream), each session is followed by the same one straight to the
      upstream (TAGd-i): direct_p50, direct_p95, and proxy_p50 = p50 - direct_p50, the
      proxy's share. Exit 0 when all were ok.

  trickle.py trickle --connect HOST:PORT --addresses A --per-address K --status FILE
                     [--interval SEC] [--first-octet 127.1] [--duration SEC]
      A x K sockets, K from each of A loopback addresses (FIRST-OCTET.X.Y), that send one
      byte of an endless "EHLO trickle.example xxx..." line every INTERVAL seconds and never
      its end, starting once every socket has been greeted. Every 0.25 s it writes
      (atomically) a JSON line to FILE: sockets connected, greeted (a 220 came), open,
      closed by the peer, the reply lines that came after the greeting (by code: 421...), connect failures, and how long after its first byte each closed
      socket had been trickling (min and max). Runs until every socket is closed or
      DURATION (default 600) s have passed, or until SIGTERM.

  trickle.py burst --connect HOST:PORT --source IP --count N --until FILE [--timeout SEC]
      Opens N connections from IP, one after the other (each kept open), and reads the
      first reply line of each. Prints one JSON line: greeted (220s), refused (a list of
      the first lines that were not 220, with how long after the connect each came, in
      seconds), silent (no line within TIMEOUT). The connections stay open until FILE
      exists (so that a caller can hold them while it checks others).
"""

import argparse
import json
import os
import selectors
import signal
import smtplib
import socket
import sys
import time


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def one_session(host, port, tag, i, timeout):
    msg = ("From: app@client.test\r\nTo: someone@dest.test\r\n"
           "Subject: trickle test %d\r\nMessage-ID: <%s-%d@client.test>\r\n\r\n"
           "Body of message %d.\r\n" % (i, tag, i, i))
    s = smtplib.SMTP(host, port, local_hostname="legit.client.test", timeout=timeout)
    s.ehlo()
    refused = s.sendmail("app@client.test", ["someone@dest.test"], msg)
    code, _ = s.quit()
    if refused or code != 221:
        raise RuntimeError("refused %r, QUIT %s" % (refused, code))


def legit(a):
    host, port = hostport(a.connect)
    lat, dlat, failed, ok = [], [], [], 0
    for i in range(a.sessions):
        t0 = time.monotonic()
        try:
            one_session(host, port, a.tag, i, a.timeout)
            lat.append(time.monotonic() - t0)
            ok += 1
        except Exception as e:  # noqa: BLE001 - any failure is reported
            if len(failed) < 5:
                failed.append("session %d after %.2fs: %s: %s"
                              % (i, time.monotonic() - t0, type(e).__name__, e))
        if a.direct:
            # the same session straight to the upstream: its own share, at this moment
            dhost, dport = hostport(a.direct)
            t0 = time.monotonic()
            try:
                one_session(dhost, dport, a.tag + "d", i, a.timeout)
                dlat.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001
                if len(failed) < 5:
                    failed.append("direct session %d: %s: %s" % (i, type(e).__name__, e))
    res = {
        "ok": ok, "sessions": a.sessions, "failed": failed,
        "p50": pct(lat, 50), "p95": pct(lat, 95), "max": max(lat) if lat else None,
    }
    if a.direct:
        res.update({"direct_ok": len(dlat), "direct_p50": pct(dlat, 50),
                    "direct_p95": pct(dlat, 95)})
        if lat and dlat:
            res["proxy_p50"] = res["p50"] - res["direct_p50"]
    print(json.dumps(res))
    return 0 if ok == a.sessions and (not a.direct or len(dlat) == a.sessions) else 1


class Conn:
    __slots__ = ("sock", "state", "first_at", "sent", "rx", "greeted")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connecting"
        self.first_at = None
        self.sent = 0
        self.rx = b""
        self.greeted = False


LINE = b"EHLO trickle.example "
# The octets go out in small groups every TICK seconds (5,000 sockets, one octet a second:
# 25 every 5 ms), as from many independent hosts, not in a few large bursts.
TICK = 0.005


def trickle(a):
    host, port = hostport(a.connect)
    first = a.first_octet
    sources = []
    for i in range(a.addresses):
        sources.append("%s.%d.%d" % (first, i // 250, i % 250 + 1))
    todo = [src for src in sources for _ in range(a.per_address)]
    sel = selectors.DefaultSelector()
    conns = []
    st = {"target": len(todo), "connected": 0, "greeted": 0, "open": 0, "closed_by_peer": 0,
          "connect_failed": 0, "replies": {}, "trickled_min": None, "trickled_max": None,
          "bytes_sent": 0, "errors": []}
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    connecting = 0
    started = False
    next_status = 0.0
    next_tick = time.monotonic()
    slot = 0  # the next socket (in conns) whose byte is due; a full round per interval
    deadline = time.monotonic() + a.duration

    def write_status():
        tmp = a.status + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(st) + "\n")
        os.replace(tmp, a.status)

    def closed(c, why):
        if c.state in ("closed", "failed"):
            return
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        if c.state == "connecting":
            c.state = "failed"
            st["connect_failed"] += 1
            if len(st["errors"]) < 5:
                st["errors"].append(why)
            return
        c.state = "closed"
        st["open"] -= 1
        st["closed_by_peer"] += 1
        if c.first_at is not None:
            d = round(time.monotonic() - c.first_at, 2)
            st["trickled_min"] = d if st["trickled_min"] is None else min(st["trickled_min"], d)
            st["trickled_max"] = d if st["trickled_max"] is None else max(st["trickled_max"], d)

    while not stop[0] and time.monotonic() < deadline:
        # Start connects, at most 256 under way at once.
        while todo and connecting < 256:
            src = todo.pop()
            s = socket.socket()
            s.setblocking(False)
            try:
                s.bind((src, 0))
                s.connect_ex((host, port))
            except OSError as e:
                s.close()
                st["connect_failed"] += 1
                if len(st["errors"]) < 5:
                    st["errors"].append("%s: %s" % (src, e))
                continue
            c = Conn(s)
            conns.append(c)
            sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, c)
            connecting += 1
        now = time.monotonic()
        for key, ev in sel.select(timeout=TICK):
            c = key.data
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                connecting -= 1
                if err:
                    closed(c, "connect: %s" % os.strerror(err))
                    continue
                c.state = "open"
                st["connected"] += 1
                st["open"] += 1
                sel.modify(c.sock, selectors.EVENT_READ, c)
                if not (ev & selectors.EVENT_READ):
                    continue
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed(c, "eof")
                continue
            c.rx += data
            while b"\n" in c.rx:
                line, c.rx = c.rx.split(b"\n", 1)
                if not c.greeted and line.startswith(b"220"):
                    c.greeted = True
                    st["greeted"] += 1
                    continue
                code = line[:3].decode("ascii", "replace")
                st["replies"][code] = st["replies"].get(code, 0) + 1
            c.rx = c.rx[-512:]
        # One byte per open socket per interval, spread over the interval; from the moment
        # every socket is connected and greeted, so that all the lines start within one
        # interval whatever the ramp took.
        now = time.monotonic()
        if not started and not todo and connecting == 0 and conns and \
                st["greeted"] + st["closed_by_peer"] == len(conns):
            started = True
        if started and now >= next_tick:
            n = len(conns)
            step = max(1, int(n * TICK / a.interval) + 1)
            for _ in range(min(step, n)):
                c = conns[slot % n]
                slot += 1
                if c.state != "open":
                    continue
                b = LINE[c.sent:c.sent + 1] if c.sent < len(LINE) else b"x"
                try:
                    c.sock.send(b)
                except BlockingIOError:
                    continue
                except OSError:
                    closed(c, "send")
                    continue
                if c.first_at is None:
                    c.first_at = now
                c.sent += 1
                st["bytes_sent"] += 1
            next_tick = now + TICK
        if now >= next_status:
            write_status()
            next_status = now + 0.25
        if not todo and connecting == 0 and st["open"] == 0 and conns:
            break
    write_status()
    for c in conns:
        if c.state == "open":
            c.sock.close()
    return 0


def burst(a):
    host, port = hostport(a.connect)
    res = {"greeted": 0, "refused": [], "silent": 0}
    held = []
    for _ in range(a.count):
        t0 = time.monotonic()
        s = socket.create_connection((host, port), timeout=a.timeout,
                                     source_address=(a.source, 0))
        held.append(s)
        line = b""
        try:
            while not line.endswith(b"\n"):
                x = s.recv(512)
                if not x:
                    break
                line += x
        except OSError:
            pass
        dt = round(time.monotonic() - t0, 3)
        if line.startswith(b"220"):
            res["greeted"] += 1
        elif line:
            res["refused"].append([line.decode("ascii", "replace").strip(), dt])
        else:
            res["silent"] += 1
    print(json.dumps(res), flush=True)
    while not os.path.exists(a.until):
        time.sleep(0.1)
    for s in held:
        s.close()
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("legit")
    lg.add_argument("--connect", required=True)
    lg.add_argument("--sessions", type=int, default=100)
    lg.add_argument("--tag", required=True)
    lg.add_argument("--timeout", type=float, default=10.0)
    lg.add_argument("--direct", help="HOST:PORT of the upstream: time each session there too")
    tr = sub.add_parser("trickle")
    tr.add_argument("--connect", required=True)
    tr.add_argument("--addresses", type=int, default=250)
    tr.add_argument("--per-address", type=int, default=20)
    tr.add_argument("--interval", type=float, default=1.0)
    tr.add_argument("--first-octet", default="127.1")
    tr.add_argument("--status", required=True)
    tr.add_argument("--duration", type=float, default=600.0)
    bu = sub.add_parser("burst")
    bu.add_argument("--connect", required=True)
    bu.add_argument("--source", required=True)
    bu.add_argument("--count", type=int, required=True)
    bu.add_argument("--until", required=True)
    bu.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    return {"legit": legit, "trickle": trickle, "burst": burst}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
