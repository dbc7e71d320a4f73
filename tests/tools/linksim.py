#!/usr/bin/env python3
"""A simulated long link: a TCP proxy that adds a one-way delay each way and a bandwidth cap per
connection (docs/performance.md, "Across a long link").

    linksim.py --target 127.0.0.1:8443 --delay-ms 50 --rate-mbit 100 [--listen 127.0.0.1:0]

Prints `listening PORT` on stdout once it accepts connections, then forwards every connection to
the target until SIGTERM or SIGINT. With --stats FILE it keeps a JSON summary there (connections
accepted, bytes each way, and over plain HTTP the requests: client-to-server header ends, since a
GET has no body), rewritten whenever a connection closes and on exit.

The model, per connection and per direction: a chunk read at time t is sent on the simulated wire
when the wire is free (the previous chunk's transmission has ended) and takes size / rate to
transmit; it reaches the other end `delay` after its transmission ended. Delivery times therefore
only grow: ordering is kept, and chunks in flight overlap (a chunk is never delayed by the delay of
the one before it, only by its transmission time). What is in flight is bounded (--buffer-kib,
by default twice the bandwidth-delay product, at least 1 MiB): a full buffer stops reading, so TCP
flow control reaches the sender as it would on a real link.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import deque

SLICE = 64 * 1024  # transmission is booked in slices: a large read does not make a burst


class Stats:
    def __init__(self, path):
        self.path, self.connections, self.open, self.requests = path, 0, 0, 0
        self.bytes = {"up": 0, "down": 0}

    def save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"connections": self.connections, "open": self.open, "requests": self.requests,
                       "bytes_up": self.bytes["up"], "bytes_down": self.bytes["down"]}, f)
        os.replace(tmp, self.path)


class Direction:
    """One direction of one connection: a reader that stamps each chunk with its delivery time,
    and a writer that hands it on at that time."""

    def __init__(self, reader, writer, delay, rate, limit, stats, name):
        self.reader, self.writer = reader, writer
        self.delay, self.rate, self.limit = delay, rate, limit
        self.stats, self.name = stats, name
        self.queue = deque()       # (deliver_at, bytes or None for EOF)
        self.queued = 0            # bytes in `queue`
        self.wire_free = 0.0       # when the simulated wire ends its current transmission
        self.tail = b""            # the last bytes read, for a header end split across reads
        self.changed = asyncio.Event()

    def stamp(self, size):
        now = time.monotonic()
        start = max(now, self.wire_free)
        self.wire_free = start + (size / self.rate if self.rate else 0.0)
        return self.wire_free + self.delay

    async def read_side(self):
        try:
            while True:
                while self.queued >= self.limit:
                    self.changed.clear()
                    await self.changed.wait()
                data = await self.reader.read(min(256 * 1024, self.limit))
                if not data:
                    break
                self.stats.bytes[self.name] += len(data)
                if self.name == "up":
                    seen = self.tail + data
                    self.stats.requests += seen.count(b"\r\n\r\n")
                    self.tail = seen[-3:]
                for i in range(0, len(data), SLICE):
                    piece = data[i:i + SLICE]
                    self.queue.append((self.stamp(len(piece)), piece))
                    self.queued += len(piece)
                self.changed.set()
        except (ConnectionError, OSError):
            pass
        self.queue.append((self.stamp(0), None))
        self.changed.set()

    async def write_side(self):
        try:
            while True:
                while not self.queue:
                    self.changed.clear()
                    await self.changed.wait()
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                # Everything already due goes out in one write.
                out = []
                now = time.monotonic()
                eof = False
                while self.queue and self.queue[0][0] <= now:
                    _, piece = self.queue.popleft()
                    if piece is None:
                        eof = True
                        break
                    out.append(piece)
                    self.queued -= len(piece)
                self.changed.set()
                if out:
                    self.writer.write(b"".join(out))
                    await self.writer.drain()
                if eof:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
        except (ConnectionError, OSError):
            # The receiver is gone: so is the connection (the other direction's reader, on the
            # same socket, sees it end).
            self.writer.transport.abort()
            return


async def relay(client_r, client_w, args, stats):
    accepted = time.monotonic()
    stats.connections += 1
    stats.open += 1
    try:
        host, port = args.target.rsplit(":", 1)
        try:
            up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            client_w.close()
            return
        for w in (client_w, up_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = Direction(client_r, up_w, args.delay, args.rate, args.buffer, stats, "up")
        # The TCP handshake: the kernel accepted at once, but on the real link the client could
        # send its first byte one round trip after its SYN.
        up.wire_free = accepted + 2 * args.delay
        down = Direction(up_r, client_w, args.delay, args.rate, args.buffer, stats, "down")
        tasks = [asyncio.create_task(c) for c in
                 (up.read_side(), up.write_side(), down.read_side(), down.write_side())]
        # Both writers end at their EOF; a reset on either side ends the whole connection.
        try:
            await asyncio.wait(tasks[1::2], return_when=asyncio.ALL_COMPLETED)
        except asyncio.CancelledError:
            pass  # shutting down
        for t in tasks:
            t.cancel()
        for w in (client_w, up_w):
            w.close()
    finally:
        stats.open -= 1
        stats.save()


async def main_async(args):
    stats = Stats(args.stats)
    stats.save()
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(lambda r, w: relay(r, w, args, stats),
                                        host.strip("[]"), int(port))
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    stats.save()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free one)")
    p.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay (half the round trip)")
    p.add_argument("--rate-mbit", type=float, default=0.0, help="per connection and direction; 0: no cap")
    p.add_argument("--buffer-kib", type=int, default=0, help="bytes in flight per direction; 0: auto")
    p.add_argument("--stats", help="a JSON file with the counts")
    args = p.parse_args()
    args.delay = args.delay_ms / 1000.0
    args.rate = args.rate_mbit * 1e6 / 8
    if args.buffer_kib > 0:
        args.buffer = args.buffer_kib * 1024
    else:
        bdp = args.rate * args.delay if args.rate else 4 * 1024 * 1024
        args.buffer = max(1 << 20, int(2 * bdp))
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
