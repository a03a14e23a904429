#!/usr/bin/python3
"""Scripted SMTP/LMTP client: runs STEPs in order over one connection and checks every
reply. Prints one JSON line {"ok", "failed_step", "why", "transcript"}; exit 0 when every
step passed, 1 otherwise.

  smtp_dialog.py --connect HOST:PORT [--source IP] [--implicit] [--ca FILE] [--name NAME]
                 [--timeout SEC] STEP...

Steps:
  expect:CODE[:TEXT]   read one whole reply (multi-line); its code must match the regex
                       CODE at the start (e.g. 250, 4(21|51), 2..) and, if given, the reply
                       must contain TEXT (case-insensitive)
  send:LINE            send LINE + CRLF
  cmd:CODE:LINE        send:LINE then expect:CODE
  raw:TEXT             send TEXT in one write; \\r \\n \\t \\\\ and \\xNN are unescaped
  long:N:TEXT          an overlong line in one write: "NOOP " + "A" * (N - 5) + TEXT + CRLF
                       (TEXT starts at offset N)
  starttls             TLS handshake now (verifying the server with --ca/--name if given)
  has:KEYWORD          the last reply announces KEYWORD (first word of a line's text)
  lacks:KEYWORD        it does not
  contains:TEXT / absent:TEXT   the last reply contains / does not contain TEXT
  data:FILE            send FILE (CRLF lines) dot-stuffed plus CRLF.CRLF, in one write
  bdat:FILE            send FILE as two BDAT chunks split mid-line (no dot-stuffing), each
                       command and its octets in one write; each must get a 250
  closed:SEC           the server closes within SEC seconds with no further byte
  silent:SEC           no byte arrives within SEC seconds (the connection may stay open)
  sleep:SEC
  drain:SEC            read (and record) whatever arrives until the server closes or SEC
                       seconds pass; never fails
  after:SEC / before:SEC   at least / at most SEC seconds passed since the connect
"""

import argparse
import json
import re
import socket
import ssl
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--connect", required=True)
p.add_argument("--source")
p.add_argument("--implicit", action="store_true")
p.add_argument("--ca")
p.add_argument("--name")
p.add_argument("--timeout", type=float, default=10.0)
p.add_argument("steps", nargs="*")
ARGS = p.parse_args()


class StepFailed(Exception):
    pass


def unescape(s):
    return s.encode("latin-1").decode("unicode_escape").encode("latin-1")


class Client:
    def __init__(self):
        host, port = ARGS.connect.rsplit(":", 1)
        self.sock = socket.create_connection(
            (host, int(port)), ARGS.timeout,
            source_address=(ARGS.source, 0) if ARGS.source else None)
        self.t0 = time.monotonic()
        self.buf = b""
        self.eof = False
        self.last = []
        self.transcript = []
        if ARGS.implicit:
            self.starttls()

    def log(self, who, data):
        for l in data.decode("utf-8", "replace").split("\r\n"):
            if l:
                self.transcript.append("%s: %s" % (who, l[:300]))

    def send(self, data):
        self.log("C", data)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise StepFailed("send failed: %s" % e)

    def fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError) as e:
            self.eof = True
            raise StepFailed("connection reset: %s" % e)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_reply(self):
        deadline = time.monotonic() + ARGS.timeout
        lines = []
        while True:
            while b"\n" not in self.buf:
                try:
                    if not self.fill(deadline):
                        raise StepFailed("connection closed while waiting for a reply"
                                         + (" (after %r)" % lines if lines else ""))
                except socket.timeout:
                    raise StepFailed("no reply within %ss (have %r)"
                                     % (ARGS.timeout, lines + [self.buf[:200]]))
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.rstrip(b"\r").decode("utf-8", "replace")
            self.transcript.append("S: " + line[:300])
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        self.last = lines
        return lines

    def starttls(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ARGS.ca:
            ctx.load_verify_locations(ARGS.ca)
            ctx.check_hostname = bool(ARGS.name)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.buf:
            raise StepFailed("bytes received before the TLS handshake: %r" % self.buf[:100])
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=ARGS.name or None)
        except (ssl.SSLError, OSError) as e:
            raise StepFailed("TLS handshake failed: %s" % e)
        self.transcript.append("-- TLS %s %s" % (self.sock.version(), self.sock.cipher()[0]))

    def keywords(self):
        kws = set()
        for l in self.last:
            w = l[4:].split(" ", 1)[0].upper()
            kws.add(w.split("=", 1)[0])
        return kws

    def wait_closed(self, sec, allow_open):
        deadline = time.monotonic() + sec
        while True:
            if self.buf:
                raise StepFailed("unexpected bytes: %r" % self.buf[:200])
            try:
                if not self.fill(deadline):
                    if allow_open:
                        raise StepFailed("connection closed (expected it to stay open)")
                    return
            except socket.timeout:
                if allow_open:
                    return
                raise StepFailed("still open after %ss" % sec)
            except StepFailed:
                if allow_open:
                    raise
                return  # reset counts as closed

    def step(self, st):
        kind, _, arg = st.partition(":")
        if kind == "expect":
            code, _, text = arg.partition(":")
            lines = self.read_reply()
            if not re.match(code, lines[0][:3]):
                raise StepFailed("wanted %s, got %r" % (code, lines))
            if text and text.lower() not in "\n".join(lines).lower():
                raise StepFailed("wanted %r in %r" % (text, lines))
        elif kind == "send":
            self.send(arg.encode("utf-8") + b"\r\n")
        elif kind == "cmd":
            code, _, line = arg.partition(":")
            self.send(line.encode("utf-8") + b"\r\n")
            self.step("expect:" + code)
        elif kind == "raw":
            self.send(unescape(arg))
        elif kind == "long":
            n, _, text = arg.partition(":")
            line = b"NOOP " + b"A" * (int(n) - 5) + text.encode() + b"\r\n"
            self.send(line)
        elif kind == "starttls":
            self.starttls()
        elif kind == "has":
            if arg.upper() not in self.keywords():
                raise StepFailed("%s not announced in %r" % (arg, self.last))
        elif kind == "lacks":
            if arg.upper() in self.keywords():
                raise StepFailed("%s announced in %r" % (arg, self.last))
        elif kind == "contains":
            if arg.lower() not in "\n".join(self.last).lower():
                raise StepFailed("%r not in %r" % (arg, self.last))
        elif kind == "absent":
            if arg.lower() in "\n".join(self.last).lower():
                raise StepFailed("%r in %r" % (arg, self.last))
        elif kind == "data":
            msg = open(arg, "rb").read()
            lines = msg.split(b"\r\n")
            if lines and lines[-1] == b"":
                lines.pop()
            out = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines)
            self.send(out + b".\r\n")
        elif kind == "bdat":
            msg = open(arg, "rb").read()
            half = len(msg) // 2
            self.send(b"BDAT %d\r\n" % half + msg[:half])
            self.step("expect:250")
            self.send(b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
            self.step("expect:250")
        elif kind == "closed":
            self.wait_closed(float(arg), False)
        elif kind == "silent":
            self.wait_closed(float(arg), True)
        elif kind == "sleep":
            time.sleep(float(arg))
        elif kind == "drain":
            deadline = time.monotonic() + float(arg)
            try:
                while self.fill(deadline):
                    pass
            except (socket.timeout, StepFailed):
                pass
            for l in self.buf.split(b"\n"):
                if l.strip():
                    self.transcript.append("S: " + l.rstrip(b"\r").decode("utf-8", "replace")[:300])
            self.buf = b""
        elif kind in ("after", "before"):
            el = time.monotonic() - self.t0
            if (kind == "after" and el < float(arg)) or (kind == "before" and el > float(arg)):
                raise StepFailed("%.2fs since connect (want %s %s)" % (el, kind, arg))
        else:
            raise StepFailed("unknown step")


def main():
    res = {"ok": False, "failed_step": None, "why": None}
    c = None
    try:
        c = Client()
        for i, st in enumerate(ARGS.steps):
            res["failed_step"] = "%d %s" % (i + 1, st[:60])
            c.step(st)
        res["ok"] = True
        res["failed_step"] = None
    except StepFailed as e:
        res["why"] = str(e)
    except OSError as e:
        res["why"] = "%s: %s" % (type(e).__name__, e)
    if c:
        res["transcript"] = c.transcript
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
