#!/usr/bin/env python3
"""Idle connections for test_idle_memory.

  idle_hold.py serve --ready FILE
      an echo backend (asyncio: thousands of connections in one thread); writes its port
      to FILE once listening.
  idle_hold.py hold --connect PORT --conns N --ready FILE --release FILE [--timeout S]
      opens N connections to 127.0.0.1:PORT one after another, sends "ping N\\n" on each
      and waits for the echo (so that each one went through the whole chain); then writes
      "ready OPENED FAILED" to FILE and holds them all until FILE2 (--release) exists.
      Exit status 0 when every connection was echoed and still open at the release.
"""
import argparse
import asyncio
import os
import sys


async def serve(ready):
    async def echo(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, ready)
    async with server:
        await server.serve_forever()


async def hold(port, conns, ready, release, timeout):
    held, failed = [], 0
    for i in range(conns):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            msg = b"ping %d\n" % i
            w.write(msg)
            got = await asyncio.wait_for(r.readexactly(len(msg)), 10)
            if got != msg:
                raise ValueError("echo mismatch")
            held.append((r, w))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            failed += 1
            print("connection %d: %r" % (i, e), file=sys.stderr)
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        f.write("ready %d %d\n" % (len(held), failed))
    os.rename(tmp, ready)
    for _ in range(int(timeout * 10)):
        if os.path.exists(release):
            break
        await asyncio.sleep(0.1)
    # still open: nothing read means no EOF arrived
    alive = sum(1 for r, _ in held if not r.at_eof())
    for _, w in held:
        w.close()
    print("held %d alive %d failed %d" % (len(held), alive, failed))
    return 0 if failed == 0 and alive == conns else 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "hold"])
    p.add_argument("--ready", required=True)
    p.add_argument("--connect", type=int)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--release")
    p.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    if a.mode == "serve":
        asyncio.run(serve(a.ready))
        return 0
    return asyncio.run(hold(a.connect, a.conns, a.ready, a.release, a.timeout))


if __name__ == "__main__":
    sys.exit(main())
