#!/usr/bin/python3
"""A client that starts with a PROXY protocol header (or something else in its place), the
way a load balancer in front of the proxy does, then speaks SMTP or plain lines, in
plaintext or implicit TLS. Python 3 standard library only; its headers are built here,
independently of the proxy's code.

  pp_client.py --connect HOST:PORT [--source IP] [--timeout SEC] STEP...

Prints one JSON line {"ok", "failed_step", "why", "transcript"}; exit 0 when every step
passed, 1 otherwise. Bytes are queued by the hdr/raw/clienthello steps and leave with
the next send or sendslow step, so a header and what follows it can share one write.

Steps:
  hdr:v1:SRC:SPORT:DST:DPORT   queue a v1 header (TCP4 or TCP6 from the address; IPv6
                               addresses in brackets: [2001:db8::1])
  hdr:v2:SRC:SPORT:DST:DPORT   queue a v2 PROXY header (TCP over IPv4 or IPv6)
  hdr:v1-unknown / hdr:v2-local   queue "PROXY UNKNOWN\\r\\n" / a v2 LOCAL header
  raw:TEXT             queue TEXT; \\r \\n \\t \\\\ and \\xNN are unescaped
  clienthello          start TLS (no verification) and queue its ClientHello
  send                 send what is queued in one write
  sendslow:SEC         send what is queued one byte per write, SEC seconds apart
  expect:CODE          read one whole SMTP reply (through TLS once started); its code must
                       match the regex CODE
  cmd:CODE:LINE        send LINE + CRLF (through TLS once started), then expect:CODE
  line:TEXT            read one line (LF-terminated) that must equal TEXT
  tls:VERSION          the TLS handshake finished with this version (TLSv1.3, TLSv1.2)
  closed:SEC           the server closes (EOF or reset) within SEC seconds, and no byte
                       arrived that an earlier step did not read (as the first reading
                       step: not one byte ever)
  sleep:SEC
"""

import argparse
import ipaddress
import json
import re
import socket
import ssl
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--connect", required=True)
p.add_argument("--source")
p.add_argument("--timeout", type=float, default=10.0)
p.add_argument("steps", nargs="*")
ARGS = p.parse_args()

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class StepFailed(Exception):
    pass


def unescape(s):
    return s.encode("latin-1").decode("unicode_escape").encode("latin-1")


def header(arg):
    if arg == "v1-unknown":
        return b"PROXY UNKNOWN\r\n"
    if arg == "v2-local":
        return V2_SIG + b"\x20\x00\x00\x00"
    m = re.fullmatch(r"(v[12]):(\[[^]]+\]|[^:]+):(\d+):(\[[^]]+\]|[^:]+):(\d+)", arg)
    if not m:
        raise StepFailed("bad hdr step %r" % arg)
    ver, src, sport, dst, dport = m.groups()
    src = ipaddress.ip_address(src.strip("[]"))
    dst = ipaddress.ip_address(dst.strip("[]"))
    if ver == "v1":
        fam = "TCP4" if src.version == 4 else "TCP6"
        return ("PROXY %s %s %s %s %s\r\n" % (fam, src, dst, sport, dport)).encode()
    fam = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + int(sport).to_bytes(2, "big") + int(dport).to_bytes(2, "big")
    return V2_SIG + bytes([0x21, fam]) + len(block).to_bytes(2, "big") + block


class Client:
    def __init__(self):
        host, port = ARGS.connect.rsplit(":", 1)
        self.sock = socket.create_connection(
            (host.strip("[]"), int(port)), ARGS.timeout,
            source_address=(ARGS.source, 0) if ARGS.source else None)
        self.queue = b""
        self.buf = b""        # plaintext received, not yet consumed
        self.received = 0     # bytes ever received from the socket
        self.eof = False      # the server closed (or reset) the connection
        self.tls = None       # ssl.SSLObject over memory BIOs once clienthello ran
        self.inbio = self.outbio = None
        self.transcript = []

    def log(self, who, data):
        for l in data.decode("utf-8", "replace").split("\r\n"):
            if l:
                self.transcript.append("%s: %s" % (who, l[:200]))

    def raw_send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise StepFailed("send failed: %s" % e)

    def flush_tls(self):
        out = self.outbio.read()
        if out:
            self.raw_send(out)

    def write(self, data):
        """Application bytes: through TLS once it started."""
        self.log("C", data)
        if self.tls:
            self.tls.write(data)
            self.flush_tls()
        else:
            self.raw_send(data)

    def fill(self, deadline):
        """Reads from the socket once (socket.timeout at the deadline); sets eof when the
        server closed. TLS input drives the handshake and adds plaintext to buf."""
        if self.eof:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.received += len(data)
        if not self.tls:
            self.buf += data
            return
        self.inbio.write(data)
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
                self.transcript.append("-- TLS %s" % self.tls.version())
            while True:
                got = self.tls.read(65536)
                if not got:
                    self.eof = True
                    break
                self.buf += got
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.eof = True
        except ssl.SSLError as e:
            raise StepFailed("TLS: %s" % e)
        if not self.eof:
            self.flush_tls()

    def read_line(self, deadline):
        while b"\n" not in self.buf:
            if self.eof:
                raise StepFailed("closed while waiting for a line (have %r)" % self.buf[:200])
            try:
                self.fill(deadline)
            except socket.timeout:
                raise StepFailed("no line within %ss (have %r)" % (ARGS.timeout, self.buf[:200]))
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.rstrip(b"\r").decode("utf-8", "replace")
        self.transcript.append("S: " + line[:200])
        return line

    def read_reply(self):
        deadline = time.monotonic() + ARGS.timeout
        lines = []
        while True:
            line = self.read_line(deadline)
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def step(self, st):
        kind, _, arg = st.partition(":")
        if kind == "hdr":
            h = header(arg)
            self.transcript.append("C: (header %r)" % h[:120])
            self.queue += h
        elif kind == "raw":
            self.queue += unescape(arg)
        elif kind == "clienthello":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.inbio, self.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = ctx.wrap_bio(self.inbio, self.outbio, server_side=False)
            self.handshaken = False
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = self.outbio.read()
            if not hello or hello[0] != 0x16:
                raise StepFailed("no ClientHello")
            self.transcript.append("C: (ClientHello, %d bytes)" % len(hello))
            self.queue += hello
        elif kind == "send":
            q, self.queue = self.queue, b""
            self.raw_send(q)
        elif kind == "sendslow":
            q, self.queue = self.queue, b""
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(q)):
                self.raw_send(q[i:i + 1])
                time.sleep(float(arg))
        elif kind == "expect":
            lines = self.read_reply()
            if not re.match(arg, lines[0][:3]):
                raise StepFailed("wanted %s, got %r" % (arg, lines))
        elif kind == "cmd":
            code, _, line = arg.partition(":")
            self.write(line.encode() + b"\r\n")
            self.step("expect:" + code)
        elif kind == "line":
            got = self.read_line(time.monotonic() + ARGS.timeout)
            if got != arg:
                raise StepFailed("wanted line %r, got %r" % (arg, got))
        elif kind == "tls":
            got = self.tls.version() if self.tls and self.handshaken else None
            if got != arg:
                raise StepFailed("TLS version %r, wanted %r" % (got, arg))
        elif kind == "closed":
            deadline = time.monotonic() + float(arg)
            try:
                while not self.eof:
                    self.fill(deadline)
            except socket.timeout:
                raise StepFailed("still open after %ss" % arg)
            if self.buf:
                raise StepFailed("%d bytes arrived before the close (%d in all): %r"
                                 % (len(self.buf), self.received, self.buf[:200]))
        elif kind == "sleep":
            time.sleep(float(arg))
        else:
            raise StepFailed("unknown step %r" % st)


def main():
    result = {"ok": False, "failed_step": None, "why": None, "transcript": []}
    c = None
    try:
        c = Client()
        for i, st in enumerate(ARGS.steps):
            result["failed_step"] = "%d:%s" % (i + 1, st[:60])
            c.step(st)
        result["ok"] = True
        result["failed_step"] = None
    except StepFailed as e:
        result["why"] = str(e)
    except OSError as e:
        result["why"] = "socket: %s" % e
    if c:
        result["transcript"] = c.transcript[-20:]
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


main()
