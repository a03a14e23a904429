"""Shared helpers for the integration test peers (Python 3 standard library only)."""

import hashlib
import json
import os
import random
import ssl
import sys
import time

CHUNK = 64 * 1024

TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def split_hostport(s):
    """'127.0.0.1:80' -> ('127.0.0.1', 80)."""
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


class DataStream:
    """Deterministic pseudo-random bytes: the same seed always yields the same stream."""

    def __init__(self, seed, total):
        self.rng = random.Random(seed)
        self.left = total

    def chunk(self, size=CHUNK):
        n = min(size, self.left)
        if n <= 0:
            return b""
        self.left -= n
        return self.rng.randbytes(n)


def tls_version_setup(ctx, min_v, max_v):
    if min_v:
        ctx.minimum_version = TLS_VERSIONS[min_v]
    if max_v:
        ctx.maximum_version = TLS_VERSIONS[max_v]
    if (min_v and min_v < "1.2") or (max_v and max_v < "1.2"):
        # OpenSSL 3 refuses TLS 1.0/1.1 at the default security level.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")


def write_json(path, obj):
    """Writes obj as one JSON line; path None or '-' means stdout. Appends atomically
    enough for the tests (one write call)."""
    line = json.dumps(obj, sort_keys=True) + "\n"
    if not path or path == "-":
        sys.stdout.write(line)
        sys.stdout.flush()
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def write_file_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Hasher:
    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0

    def update(self, data):
        self.h.update(data)
        self.n += len(data)

    def hexdigest(self):
        return self.h.hexdigest()


def now():
    return time.monotonic()
