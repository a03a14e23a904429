#!/usr/bin/env python3
"""A scripted IMAP server for test_imap.sh's security checks. Writes its port to --ready,
every line it reads to --lines. Modes:
  nostls   greets with capabilities without STARTTLS; answers CAPABILITY, LOGIN (OK), LOGOUT
  preauth  greets "* PREAUTH" (with STARTTLS listed)
  inject   offers STARTTLS; answers it with an untagged response, "TAG OK", and an injected
           tagged response in the same segment, then does TLS and serves CAPABILITY/LOGOUT inside"""
import argparse
import socket
import ssl
import threading


def serve(conn, mode, lines_path, ctx):
    f = conn.makefile("rb")
    out = conn

    def log(line):
        with open(lines_path, "ab") as lf:
            lf.write(line)

    if mode == "preauth":
        out.sendall(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n")
    elif mode == "inject":
        out.sendall(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n")
    else:
        out.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
    while True:
        line = f.readline()
        if not line:
            return
        log(line)
        parts = line.strip().split(b" ")
        tag = parts[0]
        verb = parts[1].upper() if len(parts) > 1 else b""
        if verb == b"STARTTLS" and mode == "inject":
            out.sendall(b"* OK [ALERT] untagged before the OK\r\n" + tag +
                        b" OK go\r\nA1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
            conn = ctx.wrap_socket(conn, server_side=True)
            out = conn
            f = conn.makefile("rb")
        elif verb == b"CAPABILITY":
            caps = b"IMAP4rev1 AUTH=PLAIN" + (b"" if mode != "nostls" else b"")
            out.sendall(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
        elif verb == b"LOGOUT":
            out.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
            return
        else:
            out.sendall(tag + b" OK done\r\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready", required=True)
    ap.add_argument("--lines", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    ctx = None
    if a.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    open(a.lines, "ab").close()
    with open(a.ready, "w") as r:
        r.write("%d\n" % s.getsockname()[1])
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda: _safe(serve, c, a.mode, a.lines, ctx), daemon=True).start()


def _safe(fn, c, *args):
    try:
        fn(c, *args)
    except Exception:
        pass
    finally:
        c.close()


if __name__ == "__main__":
    main()
