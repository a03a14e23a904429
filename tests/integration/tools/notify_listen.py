#!/usr/bin/env python3
"""A stand-in for systemd's notification socket: binds an AF_UNIX datagram socket at
--socket and appends each datagram received to --out as one line, "monotonic_seconds
message", the message's newlines shown as '|'. --ready FILE is created once bound."""
import argparse
import os
import socket
import time

ap = argparse.ArgumentParser()
ap.add_argument("--socket", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--ready", required=True)
a = ap.parse_args()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(a.socket)
with open(a.ready + ".tmp", "w") as f:
    f.write(a.socket + "\n")
os.rename(a.ready + ".tmp", a.ready)
with open(a.out, "a", buffering=1) as out:
    while True:
        data = s.recv(65536)
        out.write("%.6f %s\n" % (time.monotonic(), data.decode("utf-8", "replace").replace("\n", "|")))
