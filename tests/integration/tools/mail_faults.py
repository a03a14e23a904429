#!/usr/bin/python3
"""Faults between the proxy and its upstream, one SMTP session each, for test_mail_faults.sh.

  mail_faults.py --relay PORT --upstream HOST:PORT --proxy HOST:PORT --runs N --seed S
                 --mode terminate|inject --msgdir DIR --out FILE.json [--stall-wait SEC]

A relay listens on 127.0.0.1:PORT (the proxy's upstream) and forwards each connection to
--upstream (Postfix). Sessions run one after the other through --proxy with Python's
smtplib, each with its own message (Message-ID <TAG@client.test>, files written to
--msgdir), and each with a fault chosen from --seed, applied to the relay connection the
session makes:

  reset-c2s / close-c2s  after K octets from the proxy were forwarded, the relay resets
                         (RST) / closes (FIN) both connections
  reset-s2c / close-s2c  the same after K octets from the upstream were forwarded
  withhold-final         (terminate mode: the relay sees plaintext) the upstream's reply to
                         the end of data is read but not forwarded, then both are reset:
                         the upstream has the message, the client must not be told it does
  stall-c2s              after K octets from the proxy nothing more is forwarded either
                         way; the sockets stay open until the proxy gives up
  client-abort           the client itself vanishes in the middle of the message body
  none                   no fault

K is drawn over the octets of a clean session (measured first, per direction), so faults
land before, during and after DATA and, in inject mode, inside the TLS handshake.
The relay notes for every connection whether it withheld or dropped a reply that followed
the end of data (plaintext only) and how many octets went each way.

Writes a JSON list, one object per session: tag, fault, k, acked (the client got 2xx to its
end of data), reply (the client's error: "CODE text" or the exception), relay (what the
relay saw). Exit status 0 once all sessions ran (the test judges the results).
"""

import argparse
import asyncio
import json
import os
import random
import smtplib
import socket
import struct
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--relay", type=int, required=True)
p.add_argument("--upstream", required=True)
p.add_argument("--proxy", required=True)
p.add_argument("--runs", type=int, default=100)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--mode", choices=["terminate", "inject"], required=True)
p.add_argument("--msgdir", required=True)
p.add_argument("--out", required=True)
p.add_argument("--timeout", type=float, default=20.0)
a = p.parse_args()

UP_HOST, UP_PORT = a.upstream.rsplit(":", 1)
PX_HOST, PX_PORT = a.proxy.rsplit(":", 1)

plan = {"fault": "none", "k": 0}  # for the next relay connection
plan_lock = threading.Lock()
conns = []  # what the relay saw, per connection, in order


def rst(w):
    """Closes a transport with an RST (SO_LINGER 0)."""
    s = w.get_extra_info("socket")
    if s is not None:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    w.transport.abort() if hasattr(w, "transport") else w.close()


async def handle(cr, cw):
    with plan_lock:
        mine = dict(plan)
        plan["fault"] = "none"  # one faulty connection per session
    seen = {"fault": mine["fault"], "k": mine["k"], "c2s": 0, "s2c": 0, "fired": False,
            "eod": False, "withheld": "", "after_eod": ""}
    conns.append(seen)
    try:
        ur, uw = await asyncio.open_connection(UP_HOST, int(UP_PORT))
    except OSError:
        cw.close()
        return
    done = asyncio.Event()
    tail = b""
    f, k = mine["fault"], mine["k"]

    def fire():
        seen["fired"] = True
        if f.startswith("reset") or f == "withhold-final":
            rst(cw)
            rst(uw)
        elif f.startswith("close"):
            cw.close()
            uw.close()

    async def pump(r, w, direction):
        nonlocal tail
        while True:
            try:
                d = await r.read(65536)
            except (ConnectionError, OSError):
                d = b""
            if not d:
                if f.startswith("stall"):
                    done.set()  # the proxy gave up (or the upstream left): the stall ends
                elif not seen["fired"]:
                    try:
                        w.write_eof()
                    except (OSError, RuntimeError):
                        pass
                return
            if seen["fired"]:
                if f.startswith("stall"):
                    continue  # stalled: read and dropped
                return
            if direction == "c2s" and a.mode == "terminate":
                if b"\r\n.\r\n" in tail + d:
                    seen["eod"] = True
                tail = (tail + d)[-4:]
            if direction == "s2c" and seen["eod"]:
                seen["after_eod"] += d.decode("latin-1")[:200]
                if f == "withhold-final":
                    seen["withheld"] = d.decode("latin-1")[:200]
                    fire()
                    return
            n = seen[direction]
            if f.endswith(direction) and n + len(d) >= k:
                cut = max(0, k - n)
                if cut:
                    w.write(d[:cut])
                    try:
                        await w.drain()
                    except (ConnectionError, OSError):
                        pass
                seen[direction] += cut
                if direction == "s2c" and seen["eod"]:
                    seen["withheld"] = d[cut:].decode("latin-1")[:200]
                fire()
                if f.startswith("stall"):
                    continue
                return
            w.write(d)
            try:
                await w.drain()
            except (ConnectionError, OSError):
                return
            seen[direction] += len(d)

    t1 = asyncio.ensure_future(pump(cr, uw, "c2s"))
    t2 = asyncio.ensure_future(pump(ur, cw, "s2c"))
    if f.startswith("stall"):
        await t1  # ends when the proxy closes its side
        t2.cancel()
    else:
        await asyncio.gather(t1, t2, return_exceptions=True)
    for w in (cw, uw):
        try:
            w.close()
        except OSError:
            pass


def relay_thread(loop, ready):
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", a.relay))
    ready.set()
    loop.run_forever()
    srv.close()


def message(tag):
    body = ("From: <app@client.test>\r\nTo: <someone@dest.test>\r\nSubject: fault %s\r\n"
            "Message-ID: <%s@client.test>\r\n\r\n" % (tag, tag))
    body += "".join("line %d of %s %s\r\n" % (i, tag, "x" * 60) for i in range(2000))
    body += ".\r\n..dots\r\nlast line\r\n"
    path = os.path.join(a.msgdir, tag + ".eml")
    with open(path, "w") as f:
        f.write(body)
    return body.encode()


def session(tag, fault):
    """One message through the proxy; returns (acked, reply)."""
    msg = message(tag)
    try:
        s = smtplib.SMTP(PX_HOST, int(PX_PORT), local_hostname="faults.client.test",
                         timeout=a.timeout)
        code, text = s.ehlo()
        if code != 250:  # smtplib would go on regardless
            return False, "%d %s" % (code, text.decode("utf-8", "replace"))
        if fault == "client-abort":
            s.mail("app@client.test")
            s.rcpt("someone@dest.test")
            code, _ = s.docmd("DATA")
            if code != 354:
                return False, "%d before the abort" % code
            s.send(msg[: len(msg) // 2])
            s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sock.close()
            return False, "client aborted"
        s.sendmail("app@client.test", ["someone@dest.test"], msg)
    except smtplib.SMTPResponseException as e:
        return False, "%d %s" % (e.smtp_code, e.smtp_error.decode("utf-8", "replace"))
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        return False, "%d %s" % (code, text.decode("utf-8", "replace"))
    except (smtplib.SMTPException, OSError) as e:
        return False, "%s: %s" % (type(e).__name__, e)
    try:
        s.quit()
    except (smtplib.SMTPException, OSError):
        pass  # the message was acknowledged: what happens to QUIT does not change that
    return True, "250"


def main():
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    threading.Thread(target=relay_thread, args=(loop, ready), daemon=True).start()
    if not ready.wait(10):
        sys.exit("relay did not start")
    rnd = random.Random(a.seed)
    # a clean session first: how many octets go each way
    acked, reply = session("%s-0" % a.mode, "none")
    if not acked:
        sys.exit("the clean session failed: %s" % reply)
    time.sleep(0.2)
    total = {"c2s": conns[-1]["c2s"], "s2c": conns[-1]["s2c"]}
    faults = ["reset-c2s", "close-c2s", "reset-s2c", "close-s2c", "stall-c2s", "client-abort"]
    if a.mode == "terminate":
        faults.append("withhold-final")
    results = [{"tag": "%s-0" % a.mode, "fault": "none", "k": 0, "acked": acked, "reply": reply,
                "relay": conns[-1]}]
    for i in range(1, a.runs + 1):
        fault = faults[i % len(faults)]
        k = 0
        if fault.endswith("c2s") or fault.endswith("s2c"):
            k = rnd.randint(0, max(0, total[fault[-3:]] - 1))
        tag = "%s-%d" % (a.mode, i)
        before = len(conns)
        with plan_lock:
            plan["fault"], plan["k"] = fault, k
        acked, reply = session(tag, fault)
        # the relay connection this session made (none when the proxy refused early)
        deadline = time.time() + 5
        while len(conns) == before and time.time() < deadline:
            time.sleep(0.01)
        with plan_lock:
            plan["fault"] = "none"
        rel = conns[before] if len(conns) > before else None
        results.append({"tag": tag, "fault": fault, "k": k, "acked": acked, "reply": reply,
                        "relay": rel})
    time.sleep(0.5)
    with open(a.out, "w") as f:
        json.dump({"total": total, "results": results}, f, indent=1)
    print("%d sessions, %d acknowledged" % (len(results), sum(r["acked"] for r in results)))


main()
