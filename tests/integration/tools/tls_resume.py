#!/usr/bin/env python3
"""TLS session resumption across connections (and processes), as a client sees it.

  tls_resume.py --ca FILE --version 1.2|1.3 STEP...

Steps, run in order (one SSLContext for all: Python resumes only within a context):
  connect:PORT[:offer=NAME][:save=NAME]
        a TLS connection to 127.0.0.1:PORT (name "localhost", verified against --ca) that
        offers the session saved as NAME, sends a line, reads its echo, and saves its own
        session as NAME (TLS 1.3: after the echo, so the server's ticket has arrived).
        Prints {"step": N, "port": PORT, "reused": bool, "version": ..., "echo": bool}.
  hup:PID:LOG:N
        SIGHUP to PID, then wait (10 s at most) until LOG holds N "event=reload result=ok"
        lines. Prints {"step": N, "reloaded": bool}.
  prepend:FILE:HEX
        writes HEX as the new first line of FILE (a key rotation).
Exit status 0 when every step ran (the caller judges the results).
"""

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--ca", required=True)
p.add_argument("--version", choices=["1.2", "1.3"], required=True)
p.add_argument("steps", nargs="+")
a = p.parse_args()

ver = ssl.TLSVersion.TLSv1_2 if a.version == "1.2" else ssl.TLSVersion.TLSv1_3
ctx = ssl.create_default_context(cafile=a.ca)
ctx.minimum_version = ver
ctx.maximum_version = ver
saved = {}
status = 0


def connect(n, port, opts):
    offer = saved.get(opts.get("offer")) if opts.get("offer") else None
    res = {"step": n, "port": port}
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname="localhost", session=offer)
        line = b"resume-check-%d\n" % n
        s.sendall(line)
        got = b""
        while len(got) < len(line):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        res["echo"] = got == line
        res["reused"] = s.session_reused
        res["version"] = s.version()
        if opts.get("save"):
            saved[opts["save"]] = s.session
        s.close()
    except (OSError, ssl.SSLError) as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
    return res


for i, step in enumerate(a.steps, 1):
    parts = step.split(":")
    if parts[0] == "connect":
        opts = dict(x.split("=", 1) for x in parts[2:])
        out = connect(i, int(parts[1]), opts)
    elif parts[0] == "hup":
        pid, log, want = int(parts[1]), parts[2], int(parts[3])
        os.kill(pid, signal.SIGHUP)
        ok = False
        for _ in range(100):
            with open(log, errors="replace") as f:
                if sum("event=reload result=ok" in ln for ln in f) >= want:
                    ok = True
                    break
            time.sleep(0.1)
        out = {"step": i, "reloaded": ok}
    elif parts[0] == "prepend":
        path, key = parts[1], parts[2]
        with open(path) as f:
            old = f.read()
        with open(path + ".new", "w") as f:
            f.write(key + "\n" + old)
        os.chmod(path + ".new", 0o600)
        os.rename(path + ".new", path)
        out = {"step": i, "prepended": True}
    else:
        print("unknown step %r" % step, file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out), flush=True)
sys.exit(status)
