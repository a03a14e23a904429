#!/usr/bin/env python3
"""Test server: plain or TLS, one thread per connection.

Modes:
  echo    send back everything received; on EOF close the write side
  source  send --bytes of deterministic data (--seed), then close; the running total
          is rewritten into --progress every 100 ms (for backpressure tests)
  sink    read until EOF, then send --reply-bytes (--reply-seed) and close
  bidir   send --bytes (--seed) while reading until EOF; close both when done
  silent  accept and never send a byte (handshake timeouts); hold until the peer closes
  backlog listen with a backlog of 0, never accept, and fill the accept queue so that
          further connects hang (connect timeouts); line 2 of --ready says full|notfull

Each finished connection appends one JSON line to --result with the byte counts,
sha256 of both directions, the TLS version, whether the client resumed a session, the SNI
received and the client certificate CN.
When listening, writes the bound port to --ready (so --listen 127.0.0.1:0 is fine).
"""

import argparse
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CHUNK, DataStream, Hasher, split_hostport, tls_version_setup,  # noqa: E402
                    write_file_atomic, write_json)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--ready", required=True, help="file receiving the bound port")
    p.add_argument("--mode", default="echo",
                   choices=["echo", "source", "sink", "bidir", "silent", "backlog"])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca", help="require a client certificate signed by this CA")
    p.add_argument("--tls-min")
    p.add_argument("--tls-max")
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reply-bytes", type=int, default=0)
    p.add_argument("--reply-seed", type=int, default=2)
    p.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF for accepted sockets")
    p.add_argument("--result", help="file receiving one JSON line per connection")
    p.add_argument("--progress", help="source mode: file rewritten with bytes sent so far")
    p.add_argument("--hold", type=float, default=60.0, help="silent mode: max seconds")
    p.add_argument("--refuse-resumption", action="store_true",
                   help="reset a connection whose ClientHello offers a session to resume "
                        "(a ticket or a TLS 1.3 PSK): a server that fails such handshakes")
    p.add_argument("--delay", type=float, default=0.0,
                   help="seconds to wait after accept before the TLS handshake or any I/O")
    return p.parse_args()


class Conn:
    def __init__(self, args, ctx, raw, peer, index):
        self.args = args
        self.ctx = ctx
        self.raw = raw
        self.peer = peer
        self.index = index
        self.sock = raw
        self.rx = Hasher()
        self.tx = Hasher()
        self.info = {"conn": index, "peer": "%s:%d" % peer}
        self.lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------
    def shut_write(self):
        if self.ctx is None:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def send_stream(self, total, seed, progress=None):
        stream = DataStream(seed, total)
        while True:
            data = stream.chunk()
            if not data:
                break
            self.sock.sendall(data)
            with self.lock:
                self.tx.update(data)
            if progress is not None:
                progress[0] = self.tx.n

    def read_all(self, on_data=None):
        while True:
            try:
                data = self.sock.recv(CHUNK)
            except (ssl.SSLError, ConnectionResetError) as e:
                self.info.setdefault("read_error", str(e))
                return
            if not data:
                return
            self.rx.update(data)
            if on_data:
                on_data(data)

    # -- modes ---------------------------------------------------------------------
    def run(self):
        try:
            if self.args.delay:
                time.sleep(self.args.delay)
            if self.args.sndbuf:
                self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.args.sndbuf)
            if self.ctx is not None:
                self.raw.settimeout(10)
                if self.args.refuse_resumption and offers_resumption(self.raw):
                    self.info["error"] = "refused: the ClientHello offers resumption"
                    self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    return
                SNI.name = None
                self.sock = self.ctx.wrap_socket(self.raw, server_side=True)
                self.sock.settimeout(None)
                self.info["sni"] = SNI.name
                self.info["tls_version"] = self.sock.version()
                self.info["session_reused"] = self.sock.session_reused
                cert = self.sock.getpeercert()
                if cert:
                    for rdn in cert.get("subject", ()):
                        for k, v in rdn:
                            if k == "commonName":
                                self.info["peer_cn"] = v
            getattr(self, "mode_" + self.args.mode)()
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            self.info["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self.info.update(received=self.rx.n, received_sha256=self.rx.hexdigest(),
                             sent=self.tx.n, sent_sha256=self.tx.hexdigest())
            if self.args.result:
                write_json(self.args.result, self.info)

    def mode_echo(self):
        def echo(data):
            self.sock.sendall(data)
            self.tx.update(data)
        self.read_all(echo)
        self.shut_write()

    def mode_source(self):
        progress = [0]
        done = threading.Event()

        def reporter():
            while not done.is_set():
                write_file_atomic(self.args.progress, "%d\n" % progress[0])
                done.wait(0.1)
            write_file_atomic(self.args.progress, "%d\n" % progress[0])

        if self.args.progress:
            threading.Thread(target=reporter, daemon=True).start()
        try:
            self.send_stream(self.args.bytes, self.args.seed, progress)
            self.shut_write()
        finally:
            done.set()
        self.read_all()

    def mode_sink(self):
        self.read_all()
        self.send_stream(self.args.reply_bytes, self.args.reply_seed)
        self.shut_write()

    def mode_bidir(self):
        err = []

        def sender():
            try:
                self.send_stream(self.args.bytes, self.args.seed)
                self.shut_write()
            except Exception as e:  # noqa: BLE001
                err.append("send: %s: %s" % (type(e).__name__, e))

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        self.read_all()
        t.join()
        if err:
            self.info["error"] = err[0]

    def mode_silent(self):
        self.sock.settimeout(self.args.hold)
        try:
            while self.sock.recv(CHUNK):
                pass
        except socket.timeout:
            pass


SNI = threading.local()


def remember_sni(sslobj, name, ctx):
    SNI.name = name


def offers_resumption(sock):
    """Peeks at the ClientHello: True when it carries a non-empty session_ticket (35) or a
    pre_shared_key (41) extension."""
    data = b""
    deadline = time.time() + 10
    while time.time() < deadline:
        data = sock.recv(16384, socket.MSG_PEEK)
        if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
            break
        if not data:
            return False
        time.sleep(0.01)
    if len(data) < 9 or data[0] != 22 or data[5] != 1:
        return False
    p = 9 + 2 + 32
    p += 1 + data[p]                                    # session id
    p += 2 + int.from_bytes(data[p:p + 2], "big")       # cipher suites
    p += 1 + data[p]                                    # compression methods
    end = p + 2 + int.from_bytes(data[p:p + 2], "big")
    p += 2
    while p + 4 <= end:
        etype = int.from_bytes(data[p:p + 2], "big")
        elen = int.from_bytes(data[p + 2:p + 4], "big")
        if (etype == 35 and elen > 0) or etype == 41:
            return True
        p += 4 + elen
    return False


def make_ctx(args):
    if not args.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.sni_callback = remember_sni
    tls_version_setup(ctx, args.tls_min, args.tls_max)
    if args.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.client_ca)
    return ctx


def backlog_mode(srv, args):
    """Fills the accept queue of a listen(0) socket; reports whether a further connect
    now hangs."""
    port = srv.getsockname()[1]
    fillers = []
    full = False
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
        _, writable, _ = select.select([], [s], [], 0.5)
        if not writable:
            full = True
            break
    write_file_atomic(args.ready, "%d\n%s\n" % (port, "full" if full else "notfull"))
    while True:
        time.sleep(3600)


def main():
    args = parse_args()
    host, port = split_hostport(args.listen)
    ctx = make_ctx(args)
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    if args.mode == "backlog":
        srv.listen(0)
        backlog_mode(srv, args)
        return
    srv.listen(128)
    write_file_atomic(args.ready, "%d\n" % srv.getsockname()[1])
    index = 0
    while True:
        raw, peer = srv.accept()
        index += 1
        c = Conn(args, ctx, raw, peer[:2], index)
        threading.Thread(target=c.run, daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
