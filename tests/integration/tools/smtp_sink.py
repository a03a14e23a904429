#!/usr/bin/python3
"""A real SMTP or LMTP server (Debian's aiosmtpd) that stores every message it accepts.

Used as the legacy plaintext server behind the proxy and as the final hop behind a test
Postfix. Run with Debian's /usr/bin/python3 (aiosmtpd is a Debian package).

  smtp_sink.py --ready FILE --store DIR [--listen HOST:PORT] [--lmtp] [--auth]
               [--raw FILE]

  --ready FILE   receives the bound port once listening
  --store DIR    each accepted message: DIR/msg-N.eml (the message exactly as received,
                 dot-unstuffed, CRLF kept) then DIR/msg-N.json (envelope: mail_from,
                 rcpt_tos, helo, peer, delivered); wait for the .json
  --lmtp         speak LMTP (LHLO; one reply per accepted recipient after DATA)
  --auth         advertise AUTH PLAIN LOGIN without TLS (any credentials are accepted)
  --raw FILE     every byte received on every connection is appended to FILE (after
                 STARTTLS: the decrypted bytes)
  --cert/--key   offer STARTTLS with this certificate (the .json then says "tls": true)

Recipients: a local part starting with "reject" gets 550 at RCPT; in LMTP mode one
starting with "defer" is accepted at RCPT and gets 452 after DATA (per-recipient reply).
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--ready", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--lmtp", action="store_true")
    p.add_argument("--auth", action="store_true")
    p.add_argument("--raw")
    p.add_argument("--cert")
    p.add_argument("--key")
    return p.parse_args()


ARGS = parse_args()
COUNTER = [0]


def local_part(addr):
    return addr.strip("<>").split("@", 1)[0].lower()


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if local_part(address).startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected" % address
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        COUNTER[0] += 1
        n = COUNTER[0]
        delivered = [r for r in envelope.rcpt_tos
                     if not (ARGS.lmtp and local_part(r).startswith("defer"))]
        base = os.path.join(ARGS.store, "msg-%d" % n)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(base + ".eml.tmp", base + ".eml")
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                "delivered": delivered, "helo": session.host_name,
                "tls": bool(session.ssl), "peer": "%s:%s" % tuple(session.peer[:2])}
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        if not ARGS.lmtp:
            return "250 2.0.0 Ok: queued as sink-%d" % n
        lines = []
        for r in envelope.rcpt_tos:
            if local_part(r).startswith("defer"):
                lines.append("452 4.2.2 <%s> Mailbox full, try again later" % r)
            else:
                lines.append("250 2.0.0 <%s> delivered as sink-%d" % (r, n))
        return "\r\n".join(lines)


def authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=True)


def raw_logging(base):
    class Logged(base):
        def data_received(self, data):
            if ARGS.raw:
                with open(ARGS.raw, "ab") as f:
                    f.write(data)
            super().data_received(data)
    return Logged


async def main():
    host, port = ARGS.listen.rsplit(":", 1)
    host = host.strip("[]")  # [IPv6]:PORT
    cls = raw_logging(LMTP if ARGS.lmtp else SMTP)
    kw = {"hostname": "sink.test", "ident": "aiosmtpd test sink"}
    if ARGS.auth:
        kw.update(auth_require_tls=False, authenticator=authenticator)
    if ARGS.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.cert, ARGS.key)
        kw["tls_context"] = ctx
    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: cls(handler, loop=loop, **kw), host, int(port))
    bound = server.sockets[0].getsockname()[1]
    with open(ARGS.ready + ".tmp", "w") as f:
        f.write("%d\n" % bound)
    os.rename(ARGS.ready + ".tmp", ARGS.ready)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    os.makedirs(ARGS.store, exist_ok=True)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    sys.exit(0)
