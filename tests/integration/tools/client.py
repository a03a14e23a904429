#!/usr/bin/env python3
"""Test client: plain or TLS.

  client.py steps --connect HOST:PORT [TLS options] STEP...
      Runs the steps in order; exit 0 when all pass, 1 otherwise. Prints one JSON line:
      {"ok":..., "failed_step":..., "why":..., "received":..., "elapsed":...}.
      Steps:
        send:TEXT     send TEXT (a trailing newline is added)
        sendq:TEXT    the same, but a failed send (connection already closed) is no error
        expect:TEXT   the next bytes received are TEXT plus newline (within --timeout)
        closed:SEC    the proxy closes the connection (EOF, reset, or a failed TLS handshake)
                      within SEC seconds, and no unexpected byte was ever received
        open:SEC      nothing arrives and the connection stays open for SEC seconds
        shutwr        shut down the write side (plain connections only)
        touch:FILE    create FILE (tells the test script we got here)
        wait:FILE     wait until FILE exists (the test script tells us to go on)
        sleep:SEC     sleep

  client.py bulk --connect HOST:PORT [TLS options] [--send-bytes N] [--expect-bytes N]
      Sends N deterministic bytes (--seed) then shuts down the write side (plain only),
      while reading until EOF, --expect-bytes, or --duration, optionally limited to
      --read-rate bytes/s; fails when nothing moves for --timeout seconds. Prints one JSON
      line with byte counts and sha256 each way.

TLS options: --tls --ca FILE --name SNI --cert FILE --key FILE --tls-min V --tls-max V
"""

import argparse
import errno
import json
import os
import select
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CHUNK, DataStream, Hasher, split_hostport,  # noqa: E402
                    tls_version_setup)


def add_conn_args(p):
    p.add_argument("--connect", required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--name", help="SNI and name to verify (default: no verification "
                                  "of the name when --ca is not given)")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--tls-min")
    p.add_argument("--tls-max")
    p.add_argument("--rcvbuf", type=int, default=0)
    p.add_argument("--timeout", type=float, default=5.0)


def parse_args():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steps")
    add_conn_args(s)
    s.add_argument("steps", nargs="*")
    b = sub.add_parser("bulk")
    add_conn_args(b)
    b.add_argument("--send-bytes", type=int, default=0)
    b.add_argument("--seed", type=int, default=11)
    b.add_argument("--expect-bytes", type=int, default=-1)
    b.add_argument("--read-rate", type=int, default=0, help="bytes per second, 0 = no limit")
    b.add_argument("--duration", type=float, default=0, help="stop reading after SEC")
    b.add_argument("--no-shutdown", action="store_true")
    return p.parse_args()


class HandshakeError(Exception):
    pass


def connect(args):
    host, port = split_hostport(args.connect)
    raw = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if args.rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    raw.settimeout(args.timeout)
    raw.connect((host, port))
    if not args.tls:
        return raw
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.ca:
        ctx.load_verify_locations(args.ca)
        ctx.check_hostname = bool(args.name)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    tls_version_setup(ctx, args.tls_min, args.tls_max)
    try:
        return ctx.wrap_socket(raw, server_hostname=args.name or None)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise HandshakeError("%s: %s" % (type(e).__name__, e)) from e


# --- steps -------------------------------------------------------------------------------

class Steps:
    def __init__(self, args):
        self.args = args
        self.sock = None
        self.buf = b""
        self.received = 0
        self.closed = None  # reason string once the connection is known to be closed
        self.t0 = time.monotonic()
        self.result = {}

    def recv_some(self, deadline):
        """Reads into self.buf until deadline; returns False once closed."""
        if self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(CHUNK)
        except socket.timeout:
            return True
        except ssl.SSLWantReadError:
            return True
        except (ssl.SSLError, OSError) as e:
            self.closed = "error: %s: %s" % (type(e).__name__, e)
            return False
        if not data:
            self.closed = "eof"
            return False
        self.buf += data
        self.received += len(data)
        return True

    def step(self, spec):
        name, _, arg = spec.partition(":")
        a = self.args
        if name in ("send", "sendq"):
            if self.closed:
                return None if name == "sendq" else \
                    "connection already closed (%s)" % self.closed
            try:
                self.sock.sendall(arg.encode() + b"\n")
            except (ssl.SSLError, OSError) as e:
                self.closed = "send error: %s" % e
                return None if name == "sendq" else "send failed: %s" % e
            return None
        if name == "expect":
            want = arg.encode() + b"\n"
            deadline = time.monotonic() + a.timeout
            while len(self.buf) < len(want) and time.monotonic() < deadline:
                if not self.recv_some(deadline):
                    break
            if self.buf[:len(want)] != want:
                return "expected %r, got %r (%s)" % (want, self.buf[:200],
                                                       self.closed or "timeout")
            self.buf = self.buf[len(want):]
            return None
        if name == "closed":
            deadline = time.monotonic() + float(arg)
            while not self.closed and time.monotonic() < deadline:
                self.recv_some(deadline)
            if not self.closed:
                return "still open after %ss" % arg
            self.result["closed_after"] = round(time.monotonic() - self.t0, 3)
            self.result["closed_how"] = self.closed
            if self.buf:
                return "received unexpected bytes before the close: %r" % self.buf[:200]
            return None
        if name == "open":
            deadline = time.monotonic() + float(arg)
            while not self.closed and time.monotonic() < deadline:
                self.recv_some(deadline)
            if self.closed:
                return "closed after %.2fs (%s)" % (time.monotonic() - self.t0, self.closed)
            if self.buf:
                return "unexpected bytes: %r" % self.buf[:200]
            return None
        if name == "shutwr":
            self.sock.shutdown(socket.SHUT_WR)
            return None
        if name == "touch":
            open(arg, "w").close()
            return None
        if name == "wait":
            deadline = time.monotonic() + 60
            while not os.path.exists(arg):
                if time.monotonic() > deadline:
                    return "timed out waiting for %s" % arg
                time.sleep(0.05)
            return None
        if name == "sleep":
            time.sleep(float(arg))
            return None
        return "unknown step %r" % spec

    def run(self):
        ok, failed, why = True, None, None
        try:
            self.sock = connect(self.args)
        except HandshakeError as e:
            # A refused TLS handshake is one way of being closed.
            self.closed = "handshake failed: %s" % e
            self.result["handshake_error"] = str(e)
        except OSError as e:
            if self.args.steps and self.args.steps[0].startswith("closed:") and \
                    e.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
                self.closed = "connect: %s" % e
            else:
                ok, failed, why = False, "connect", "%s: %s" % (type(e).__name__, e)
        if ok:
            if self.closed and not any(s.startswith("closed:") for s in self.args.steps):
                ok, failed, why = False, "connect", self.closed
            else:
                for spec in self.args.steps:
                    err = self.step(spec)
                    if err:
                        ok, failed, why = False, spec, err
                        break
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.result.update(ok=ok, failed_step=failed, why=why, received=self.received,
                           elapsed=round(time.monotonic() - self.t0, 3))
        print(json.dumps(self.result, sort_keys=True))
        return 0 if ok else 1


# --- bulk --------------------------------------------------------------------------------

def bulk(args):
    """Single-threaded (one SSL object must not be used by two threads at once): a select
    loop that writes the data stream and reads what comes back."""
    t0 = time.monotonic()
    try:
        sock = connect(args)
    except (HandshakeError, OSError) as e:
        print(json.dumps({"error": "connect: %s" % e}))
        return 1
    sock.setblocking(False)
    tx, rx = Hasher(), Hasher()
    stream = DataStream(args.seed, args.send_bytes)
    out = b""
    sending = args.send_bytes > 0
    reading = True
    eof = False
    error = None
    deadline = t0 + args.duration if args.duration else None
    last_progress = time.monotonic()
    rate = args.read_rate
    if not sending and not args.no_shutdown and not args.tls:
        sock.shutdown(socket.SHUT_WR)

    while sending or reading:
        now = time.monotonic()
        if deadline and now >= deadline:
            break
        if now - last_progress > args.timeout:
            error = "stalled: no progress for %.0fs" % args.timeout
            break
        if args.expect_bytes >= 0 and rx.n >= args.expect_bytes:
            reading = False
        read_now = reading
        wait = 0.2
        budget = CHUNK
        if reading and rate:
            allowed = int((now - t0) * rate) + 1
            budget = min(CHUNK, allowed - rx.n)
            if budget <= 0:
                read_now = False
                wait = min(wait, (rx.n - allowed + 1) / rate + 0.001)
        if read_now and args.tls and sock.pending():
            rl, wl = [sock], []
        else:
            rl, wl, _ = select.select([sock] if read_now else [],
                                      [sock] if sending else [], [], wait)
        if rl:
            try:
                while budget > 0:
                    data = sock.recv(budget)
                    if not data:
                        eof = True
                        reading = False
                        break
                    rx.update(data)
                    last_progress = time.monotonic()
                    if rate:
                        break
                    if args.expect_bytes >= 0 and rx.n >= args.expect_bytes:
                        break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (OSError, ssl.SSLError) as e:
                error = "recv: %s: %s" % (type(e).__name__, e)
                break
        if wl and sending:
            if not out:
                out = stream.chunk()
            try:
                n = sock.send(out)
                tx.update(out[:n])
                out = out[n:]
                last_progress = time.monotonic()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (OSError, ssl.SSLError) as e:
                error = "send: %s: %s" % (type(e).__name__, e)
                break
            if not out and stream.left == 0:
                sending = False
                if not args.no_shutdown and not args.tls:
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError as e:
                        error = "shutdown: %s" % e
                        break

    res = dict(sent=tx.n, sent_sha256=tx.hexdigest(), received=rx.n,
               received_sha256=rx.hexdigest(), eof=eof,
               elapsed=round(time.monotonic() - t0, 3))
    if error:
        res["error"] = error
    try:
        sock.close()
    except OSError:
        pass
    print(json.dumps(res, sort_keys=True))
    sys.stdout.flush()
    return 0 if not error else 1


def main():
    args = parse_args()
    if args.cmd == "steps":
        return Steps(args).run()
    return bulk(args)


if __name__ == "__main__":
    sys.exit(main())
