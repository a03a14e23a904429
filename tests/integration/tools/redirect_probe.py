#!/usr/bin/python3
"""Where does a connection end up? For tests of REDIRECT rules (test_kubernetes.sh).

  redirect_probe.py serve --ready FILE [--proxy IP:PORT] [--direct ADDR:PORT ...]
      listens on each address; the --proxy listener answers "proxy ORIGDST" (the address
      the client dialled, from SO_ORIGINAL_DST, as the proxy reads it), each --direct one
      "direct ADDR:PORT" (its own address). One line per connection, then close. Writes
      FILE once every socket listens; runs until killed.

  redirect_probe.py connect ADDR:PORT ...
      one line per target: "ADDR:PORT ANSWER", where ANSWER is the line the listener sent,
      "refused" (connection refused or reset), or "error TEXT". Exit 0.

ADDR is IPv4, or IPv6 in brackets.
"""

import errno
import os
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def split(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def fmt(family, host, port):
    return ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (host, port)


def listener(addr):
    host, port = split(addr)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(16)
    return s


def original_dst(conn):
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    return "%s:%d" % (socket.inet_ntoa(ip), port)


def serve(args):
    ready, proxy, direct = None, None, []
    while args:
        if args[0] == "--ready":
            ready = args[1]
        elif args[0] == "--proxy":
            proxy = args[1]
        elif args[0] == "--direct":
            direct.append(args[1])
        else:
            sys.exit(__doc__)
        args = args[2:]
    if not ready or not (proxy or direct):
        sys.exit(__doc__)
    sel = selectors.DefaultSelector()
    if proxy:
        sel.register(listener(proxy), selectors.EVENT_READ, "proxy")
    for d in direct:
        sel.register(listener(d), selectors.EVENT_READ, "direct")
    with open(ready + ".tmp", "w") as f:
        f.write("ready\n")
    os.rename(ready + ".tmp", ready)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            try:
                if key.data == "proxy":
                    try:
                        what = "proxy " + original_dst(conn)
                    except OSError as e:
                        what = "proxy no-original-destination (%s)" % e.strerror
                else:
                    h, p = conn.getsockname()[:2]
                    what = "direct " + fmt(conn.family, h, p)
                conn.sendall((what + "\n").encode())
            except OSError:
                pass
            finally:
                conn.close()


def connect(targets):
    for t in targets:
        host, port = split(t)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((host, port))
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(200)
                if not chunk:
                    break
                data += chunk
            answer = data.decode(errors="replace").strip() or "closed"
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
                answer = "refused"
            else:
                answer = "error " + (e.strerror or str(e))
        finally:
            s.close()
        print("%s %s" % (t, answer), flush=True)


def main(argv):
    if argv[:1] == ["serve"]:
        serve(argv[1:])
    elif argv[:1] == ["connect"] and len(argv) > 1:
        connect(argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
