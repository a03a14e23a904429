#!/usr/bin/python3
"""A scripted POP3 client for the proxy's tests: raw bytes, exact expectations.

  pop3_dialog.py PORT [--ca FILE] [--implicit] STEP...

  send:TEXT     write TEXT ("\\r\\n" escapes understood) in one write
  line:PREFIX   read one line; it must start with PREFIX
  multi:PREFIX  read a multi-line response (status line starting with PREFIX, then lines up
                to "."); its lines are printed
  tls           start TLS over the connection (verify against --ca, name localhost)
  eof           the server closes the connection (nothing more is read)
Every line read is printed as "< LINE". Exit 1 at the first unmet expectation.
"""

import socket
import ssl
import sys


def main():
    args = sys.argv[1:]
    port = int(args.pop(0))
    ca = None
    implicit = False
    while args and args[0].startswith("--"):
        o = args.pop(0)
        if o == "--ca":
            ca = args.pop(0)
        elif o == "--implicit":
            implicit = True
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(10)

    def wrap(sock):
        ctx = ssl.create_default_context(cafile=ca)
        return ctx.wrap_socket(sock, server_hostname="localhost")

    if implicit:
        s = wrap(s)
    buf = b""

    def readline():
        nonlocal buf
        while b"\n" not in buf:
            d = s.recv(4096)
            if not d:
                raise EOFError("connection closed")
            buf += d
        i = buf.index(b"\n") + 1
        line, buf = buf[:i], buf[i:]
        print("< " + line.decode("latin-1").rstrip("\r\n"), flush=True)
        return line

    for step in args:
        kind, _, arg = step.partition(":")
        if kind == "send":
            s.sendall(arg.encode().decode("unicode_escape").encode("latin-1"))
        elif kind in ("line", "multi"):
            try:
                line = readline()
                if not line.startswith(arg.encode()):
                    print("unexpected: want %r" % arg)
                    return 1
                if kind == "multi":
                    while readline() not in (b".\r\n", b".\n"):
                        pass
            except (EOFError, OSError) as e:
                print("error waiting for %r: %s" % (arg, e))
                return 1
        elif kind == "tls":
            if buf:
                print("bytes after the TLS go-ahead: %r" % buf)
                return 1
            s = wrap(s)
        elif kind == "eof":
            try:
                d = buf or s.recv(4096)
            except OSError:
                d = b""
            if d:
                print("expected the end, got %r" % d)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
