#!/usr/bin/env python3
"""An IMAP client for test_imap.sh that uses COMPRESS=DEFLATE (RFC 4978): connects to
--port (--tls: implicit TLS; --starttls: STARTTLS first; certificates are not checked,
the proxy's test certificate), checks that COMPRESS is refused before LOGIN and that
COMPRESS=DEFLATE is offered after it, logs in, compresses, then inside the compressed
stream selects INBOX, fetches UID --uid and compares it with --expect byte for byte, and
logs out. Exit status 0 only when all of that held; the reason is printed otherwise."""
import argparse
import re
import socket
import ssl
import sys
import zlib


class Conn:
    def __init__(self, sock):
        self.s = sock
        self.buf = b""
        self.inflate = None
        self.deflate = None

    def send(self, data):
        if self.deflate:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.s.sendall(data)

    def fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed; had %r" % self.buf[-200:])
        self.buf += self.inflate.decompress(d) if self.inflate else d

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def command(self, tag, text):
        """Sends TAG TEXT; returns (untagged lines, literals, tagged line)."""
        self.send(b"%s %s\r\n" % (tag, text))
        untagged, literals = [], []
        while True:
            ln = self.line()
            if ln.startswith(tag + b" "):
                return untagged, literals, ln
            m = re.search(rb"\{(\d+)\}\r\n$", ln)
            if m:
                literals.append(self.exact(int(m.group(1))))
            untagged.append(ln)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--uid", default="1")
    ap.add_argument("--expect", required=True)
    a = ap.parse_args()
    want = open(a.expect, "rb").read()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection(("127.0.0.1", a.port), timeout=20)
    if a.tls:
        s = ctx.wrap_socket(s)
    c = Conn(s)
    greeting = c.line()
    if not greeting.startswith(b"* OK"):
        sys.exit("greeting: %r" % greeting)
    if a.starttls:
        _, _, t = c.command(b"s1", b"STARTTLS")
        if not t.startswith(b"s1 OK"):
            sys.exit("STARTTLS: %r" % t)
        c.s = ctx.wrap_socket(c.s)
    _, _, t = c.command(b"c0", b"COMPRESS DEFLATE")
    if not t.startswith(b"c0 BAD"):
        sys.exit("COMPRESS before LOGIN was not refused: %r" % t)
    _, _, t = c.command(b"c1", b"LOGIN alice secret")
    if not t.startswith(b"c1 OK"):
        sys.exit("LOGIN: %r" % t)
    u, _, t = c.command(b"c2", b"CAPABILITY")
    caps = b" ".join(u).upper().split()
    if b"COMPRESS=DEFLATE" not in caps:
        sys.exit("COMPRESS=DEFLATE not offered after login: %r" % u)
    _, _, t = c.command(b"c3", b"COMPRESS DEFLATE")
    if not t.startswith(b"c3 OK"):
        sys.exit("COMPRESS: %r" % t)
    if c.buf:
        sys.exit("bytes after the OK to COMPRESS: %r" % c.buf)
    c.inflate = zlib.decompressobj(-15)
    c.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    _, _, t = c.command(b"c4", b"SELECT INBOX")
    if not t.startswith(b"c4 OK"):
        sys.exit("SELECT (compressed): %r" % t)
    _, lits, t = c.command(b"c5", b"UID FETCH %s (BODY.PEEK[])" % a.uid.encode())
    if not t.startswith(b"c5 OK") or len(lits) != 1 or lits[0] != want:
        sys.exit("FETCH (compressed): %r %r" % (t, [x[:80] for x in lits]))
    # a STARTTLS inside the compressed stream is the upstream's to answer, not the proxy's
    _, _, t = c.command(b"c6", b"STARTTLS")
    if t.startswith(b"c6 OK"):
        sys.exit("STARTTLS accepted inside the compressed stream: %r" % t)
    u, _, t = c.command(b"c7", b"LOGOUT")
    if not t.startswith(b"c7 OK") or not any(x.startswith(b"* BYE") for x in u):
        sys.exit("LOGOUT (compressed): %r %r" % (u, t))
    print("ok: %d octets fetched through the compressed stream" % len(want))


if __name__ == "__main__":
    try:
        main()
    except (OSError, EOFError, zlib.error) as e:
        sys.exit("error: %s" % e)
