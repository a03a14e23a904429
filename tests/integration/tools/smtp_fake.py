#!/usr/bin/python3
"""Scripted SMTP server for the proxy's security tests: a plain SMTP server (optionally
with STARTTLS) that can misbehave on purpose. One thread per connection.

  smtp_fake.py --ready FILE --lines FILE [--store DIR] [options]

  --ready FILE        receives the bound port once listening
  --lines FILE        every line received is appended as "plain: LINE" or "tls: LINE"
                      (message data included); "# tls established VERSION session=new|reused" marks the switch
  --store DIR         accepted messages as DIR/msg-N.eml + DIR/msg-N.json (like smtp_sink)
  --starttls MODE     offer: advertise STARTTLS and do it (needs --cert/--key; default)
                      none: do not advertise it (and answer STARTTLS with 502)
                      refuse: advertise it, answer STARTTLS with --refuse-reply
                      hidden: do not advertise it but accept it anyway
                      lookalike: advertise only look-alikes (EHLO domain "STARTTLS",
                      X-STARTTLS, STARTTLSX) but accept STARTTLS if sent
                      lowercase: advertise "starttls" in lower case and do it
  --refuse-reply TXT  default "454 4.7.0 TLS not available due to local problem"
  --cert/--key        certificate for STARTTLS
  --inject            answer STARTTLS with "220 go" and "250 injected" in one write
                      (response injection, CVE-2011-0411 style), then start TLS
  --bytewise          write every reply one byte per TCP segment (TCP_NODELAY + pauses)
  --multiline-greeting  a three-line 220 greeting
  --stall WHAT        ehlo: never answer EHLO/LHLO; greeting: never send the greeting;
                      mail: never answer MAIL
  --huge-ehlo N       answer EHLO with a N-octet reply line
  --die-in-data N     after N octets of message data, reset the connection
  --die-after-data    take the whole message, then close without replying to it
  --pause-in-data SEC read nothing for SEC seconds after sending 354 (with a 64 KiB receive
                      buffer, so that a sender of a large message is held back)
  --xclient           advertise XCLIENT (and accept it with 220)
  --lmtp              accept LHLO
  --reply VERB=TEXT   answer VERB (EHLO, MAIL, ..., or GREETING) with TEXT instead; after a
                      421 the connection is closed (repeatable)
  --caps KEYWORD      one more EHLO keyword (repeatable); CHUNKING also makes BDAT work
                      (without it, BDAT gets 500 and the chunk is read as commands, as a
                      server without CHUNKING does)
  --early-220         glue "220 2.0.0 go" to the EHLO reply, before any STARTTLS arrived
  --reset-in-handshake  answer STARTTLS with 220, read the ClientHello, then reset
"""

import argparse
import json
import os
import socket
import ssl
import struct
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--listen", default="127.0.0.1:0")
p.add_argument("--ready", required=True)
p.add_argument("--lines", required=True)
p.add_argument("--store")
p.add_argument("--starttls", default="offer", choices=["offer", "none", "refuse", "hidden", "lookalike", "lowercase"])
p.add_argument("--refuse-reply", default="454 4.7.0 TLS not available due to local problem")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--inject", action="store_true")
p.add_argument("--bytewise", action="store_true")
p.add_argument("--multiline-greeting", action="store_true")
p.add_argument("--stall", choices=["ehlo", "greeting", "mail"])
p.add_argument("--huge-ehlo", type=int, default=0)
p.add_argument("--die-in-data", type=int, default=-1)
p.add_argument("--pause-in-data", type=float, default=0)
p.add_argument("--die-after-data", action="store_true")
p.add_argument("--xclient", action="store_true")
p.add_argument("--lmtp", action="store_true")
p.add_argument("--reply", action="append", default=[])
p.add_argument("--caps", action="append", default=[])
p.add_argument("--early-220", action="store_true")
p.add_argument("--reset-in-handshake", action="store_true")
ARGS = p.parse_args()
OVERRIDE = dict(r.split("=", 1) for r in ARGS.reply)

LOCK = threading.Lock()
COUNTER = [0]


_CTX = []
_CTX_LOCK = threading.Lock()


def server_ctx():
    """One context for the process: its session tickets resume across connections."""
    with _CTX_LOCK:
        if not _CTX:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(ARGS.cert, ARGS.key)
            _CTX.append(ctx)
        return _CTX[0]


def log_line(text):
    with LOCK:
        with open(ARGS.lines, "ab") as f:
            f.write(text + b"\n")


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.tls = False
        self.helo = None

    # -- I/O -------------------------------------------------------------------------
    def send(self, data):
        if ARGS.bytewise:
            for i in range(len(data)):
                self.sock.sendall(data[i:i + 1])
                time.sleep(0.002)
        else:
            self.sock.sendall(data)

    def reply(self, *lines):
        out = b""
        for i, l in enumerate(lines):
            code, text = l.split(" ", 1)
            sep = " " if i == len(lines) - 1 else "-"
            out += ("%s%s%s\r\n" % (code, sep, text)).encode()
        self.send(out)

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def readline(self):
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise Closed()
            self.fill()
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.rstrip(b"\r")
        log_line((b"tls: " if self.tls else b"plain: ") + line)
        return line

    # -- session ---------------------------------------------------------------------
    def ehlo_lines(self, name):
        lines = ["250 fake.test greets %s" % name, "250 PIPELINING", "250 SIZE 10240000",
                 "250 8BITMIME", "250 ENHANCEDSTATUSCODES"]
        if ARGS.xclient:
            lines.append("250 XCLIENT NAME ADDR PORT PROTO HELO")
        lines += ["250 %s" % c for c in ARGS.caps]
        if not self.tls and ARGS.starttls in ("offer", "refuse"):
            lines.append("250 STARTTLS")
        if not self.tls and ARGS.starttls == "lowercase":
            lines.append("250 starttls")
        if not self.tls and ARGS.starttls == "lookalike":
            lines[0] = "250 STARTTLS greets %s STARTTLS" % name
            lines += ["250 X-STARTTLS", "250 STARTTLSX", "250 XSTARTTLS ok"]
        return lines

    def starttls(self):
        if ARGS.reset_in_handshake:
            self.send(b"220 2.0.0 Ready to start TLS\r\n")
            self.fill()  # the ClientHello
            log_line(b"# reset during the handshake")
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise Closed()
        if ARGS.inject:
            self.send(b"220 go\r\n250 injected\r\n")
        else:
            self.send(b"220 2.0.0 Ready to start TLS\r\n")
        # What the client pipelined after STARTTLS is discarded, as a server must.
        self.buf = b""
        self.sock.settimeout(10)
        self.sock = server_ctx().wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(None)
        self.tls = True
        log_line(b"# tls established " + self.sock.version().encode() +
                 (b" session=reused" if self.sock.session_reused else b" session=new"))

    def data(self, mail_from, rcpts):
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        if ARGS.pause_in_data:
            log_line(b"# pausing in data")
            time.sleep(ARGS.pause_in_data)
            log_line(b"# reading again")
        body, self.buf = self.buf, b""
        while True:
            if 0 <= ARGS.die_in_data <= len(body):
                log_line(b"# dying in data after %d octets" % len(body))
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
                raise Closed()
            if body.startswith(b".\r\n"):
                msg, self.buf = b"", body[3:]
                break
            idx = body.find(b"\r\n.\r\n")
            if idx != -1:
                msg, self.buf = body[:idx + 2], body[idx + 5:]
                break
            self.fill()
            body += self.buf
            self.buf = b""
        log_line((b"tls: " if self.tls else b"plain: ") + b"<data %d octets>" % len(msg))
        if ARGS.die_after_data:
            log_line(b"# closing without a reply to the message")
            raise Closed()
        # Dot-unstuffing.
        lines = msg.split(b"\r\n")
        msg = b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)
        self.store(mail_from, rcpts, msg)
        if ARGS.lmtp:
            for r in rcpts:
                self.reply("250 2.0.0 <%s> delivered" % r)
        else:
            self.reply("250 2.0.0 Ok: queued as fake-%d" % (COUNTER[0]))

    def store(self, mail_from, rcpts, msg):
        with LOCK:
            COUNTER[0] += 1
            n = COUNTER[0]
        if ARGS.store:
            base = os.path.join(ARGS.store, "msg-%d" % n)
            with open(base + ".eml", "wb") as f:
                f.write(msg)
            with open(base + ".json", "w") as f:
                json.dump({"mail_from": mail_from, "rcpt_tos": rcpts, "helo": self.helo,
                           "tls": self.tls, "peer": "%s:%d" % self.peer}, f)

    def run(self):
        if ARGS.stall == "greeting":
            while True:
                self.readline()
        if "GREETING" in OVERRIDE:
            self.send((OVERRIDE["GREETING"] + "\r\n").encode())
            if OVERRIDE["GREETING"].startswith("421"):
                raise Closed()
        elif ARGS.multiline_greeting:
            self.reply("220 fake.test ESMTP first line", "220 second line",
                       "220 fake.test ready")
        else:
            self.reply("220 fake.test ESMTP fake")
        mail_from, rcpts = None, []
        while True:
            line = self.readline()
            verb = line.split(b" ", 1)[0].upper().decode("latin-1")
            arg = line[len(verb) + 1:].decode("latin-1")
            if verb in OVERRIDE:
                self.send((OVERRIDE[verb] + "\r\n").encode())
                if OVERRIDE[verb].startswith("421"):
                    raise Closed()
                continue
            if verb in ("EHLO", "LHLO"):
                self.helo = arg
                if ARGS.stall == "ehlo":
                    continue
                if ARGS.huge_ehlo:
                    self.send(b"250-fake.test " + b"x" * ARGS.huge_ehlo + b"\r\n250 OK\r\n")
                    continue
                if ARGS.early_220:
                    out = b""
                    lines = self.ehlo_lines(arg)
                    for i, l in enumerate(lines):
                        out += ("%s%s%s\r\n" % (l[:3], " " if i == len(lines) - 1 else "-",
                                                l[4:])).encode()
                    self.send(out + b"220 2.0.0 go\r\n")
                    continue
                self.reply(*self.ehlo_lines(arg))
            elif verb == "BDAT" and "CHUNKING" in ARGS.caps:
                parts = arg.split()
                n = int(parts[0])
                while len(self.buf) < n:
                    self.fill()
                chunk, self.buf = self.buf[:n], self.buf[n:]
                log_line((b"tls: " if self.tls else b"plain: ") + b"<chunk %d octets>" % n)
                self.chunks = getattr(self, "chunks", b"") + chunk
                if len(parts) > 1 and parts[1].upper() == "LAST":
                    msg, self.chunks = self.chunks, b""
                    self.store(mail_from, rcpts, msg)
                    mail_from, rcpts = None, []
                    self.reply("250 2.0.0 Ok: queued as fake-%d" % COUNTER[0])
                else:
                    self.reply("250 2.0.0 %d octets received" % n)
            elif verb == "HELO":
                self.helo = arg
                self.reply("250 fake.test")
            elif verb == "STARTTLS":
                if self.tls or ARGS.starttls == "none":
                    self.reply("502 5.5.1 STARTTLS not available")
                elif ARGS.starttls == "refuse":
                    self.send((ARGS.refuse_reply + "\r\n").encode())
                else:
                    self.starttls()
                    mail_from, rcpts = None, []
            elif verb == "XCLIENT" and ARGS.xclient:
                self.reply("220 fake.test ESMTP fake (xclient)")
            elif verb == "MAIL" and ARGS.stall == "mail":
                continue
            elif verb == "MAIL":
                mail_from, rcpts = arg, []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(arg)
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if not rcpts:
                    self.reply("503 5.5.1 Error: need RCPT command")
                    continue
                self.data(mail_from, rcpts)
                mail_from, rcpts = None, []
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET":
                    mail_from, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                raise Closed()
            else:
                self.reply("502 5.5.2 Error: command not recognized")


def serve(sock, peer):
    c = Conn(sock, peer)
    log_line(b"# connect from %s:%d" % (peer[0].encode(), peer[1]))
    try:
        c.run()
    except (Closed, OSError, ssl.SSLError) as e:
        if not isinstance(e, Closed):
            log_line(b"# error " + str(e).encode())
    finally:
        log_line(b"# disconnect")
        try:
            c.sock.close()
        except OSError:
            pass


def main():
    host, port = ARGS.listen.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ARGS.pause_in_data:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ls.bind((host, int(port)))
    ls.listen(64)
    open(ARGS.lines, "ab").close()
    if ARGS.store:
        os.makedirs(ARGS.store, exist_ok=True)
    with open(ARGS.ready + ".tmp", "w") as f:
        f.write("%d\n" % ls.getsockname()[1])
    os.rename(ARGS.ready + ".tmp", ARGS.ready)
    while True:
        s, peer = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(s, peer), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
