#!/usr/bin/python3
"""fake_agents_server.py - a tiny in-memory stand-in for the /agents API, used only to test
the dsbench-* tools while (or where) the real server is not available.

It implements just what the tools exercise, following /work/shared/spec/agents-api.md:
POST /agents/<p> (204 + Stream-Offset/Stream-Next-Offset), GET /agents/<p>?offset=&live=
(SSE frames "id:/event: data/data:", exclusive offsets, history then live; live responses
are chunked, non-live ones carry Content-Length), HTTP/1.1 keep-alive and pipelining.
It is not a benchmark target: never compare its figures with anything.

Usage: /usr/bin/python3 fake_agents_server.py [--port N]   (prints "listening on URL")
Fault injection for the tools' own tests: FAKE_DROP_EVERY=N skips every Nth live event,
FAKE_DUPLICATE=1 sends every live event twice.
"""
import asyncio
import json
import os
import sys
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit, parse_qs

streams = {}   # path -> list of encoded "data" JSON strings
waiters = {}   # path -> set of asyncio.Queue
DROP_EVERY = int(os.environ.get("FAKE_DROP_EVERY", "0"))
DUPLICATE = os.environ.get("FAKE_DUPLICATE") == "1"


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def frame(off, data):
    return ("id: %016d\nevent: data\ndata: %s\n\n" % (off, data)).encode()


def chunk(b):
    return b"%x\r\n%s\r\n" % (len(b), b)


def simple(status, reason, body=b"", headers=()):
    h = "HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    for k, v in headers:
        h += "%s: %s\r\n" % (k, v)
    return h.encode() + b"\r\n" + body


def bad(msg, status=400, reason="Bad Request"):
    body = json.dumps({"error": msg}).encode()
    return simple(status, reason, body, [("Content-Type", "application/json")])


async def handle(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            method, target, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, v = h.decode().split(":", 1)
                headers[k.strip().lower()] = v.strip()
            body = b""
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            u = urlsplit(target)
            if not u.path.startswith("/agents/") or len(u.path) <= len("/agents/"):
                writer.write(bad("not found", 404, "Not Found"))
                await writer.drain()
                continue
            path = unquote(u.path[len("/agents/"):])
            if method == "POST":
                try:
                    ev = json.loads(body)
                except ValueError:
                    writer.write(bad("invalid JSON"))
                    await writer.drain()
                    continue
                if not isinstance(ev, dict) or not ev.get("type") or not isinstance(ev.get("payload"), dict):
                    writer.write(bad("invalid event"))
                    await writer.drain()
                    continue
                log = streams.setdefault(path, [])
                off = len(log)
                out = {"type": ev["type"], "payload": ev["payload"], "version": str(ev.get("version", "1")),
                       "path": path, "offset": "%016d" % off, "createdAt": now_iso()}
                data = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
                log.append(data)
                for q in list(waiters.get(path, ())):
                    q.put_nowait((off, data))
                writer.write(simple(204, "No Content", b"", [("Stream-Offset", "%016d" % off),
                                                           ("Stream-Next-Offset", "%016d" % (off + 1))]))
                await writer.drain()
                continue
            if method != "GET":
                writer.write(bad("method not allowed", 404, "Not Found"))
                await writer.drain()
                continue
            q = parse_qs(u.query, keep_blank_values=True)
            o = q.get("offset", ["-1"])[0]
            live = q.get("live", [""])[0] in ("sse", "true")
            log = streams.get(path, [])
            if o in ("", "-1"):
                start = 0
            elif o == "now":
                start = len(log)
            elif o.isdigit() and len(o) <= 16:
                start = int(o) + 1
            else:
                writer.write(bad("bad offset"))
                await writer.drain()
                continue
            hdr = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n")
            if not live:
                payload = b"".join(frame(i, log[i]) for i in range(start, len(log)))
                writer.write((hdr + "Content-Length: %d\r\n\r\n" % len(payload)).encode() + payload)
                await writer.drain()
                continue
            queue = asyncio.Queue()
            waiters.setdefault(path, set()).add(queue)
            writer.write((hdr + "Transfer-Encoding: chunked\r\n\r\n").encode())
            sent = start - 1
            for i in range(start, len(log)):
                writer.write(chunk(frame(i, log[i])))
                sent = i
            await writer.drain()
            try:
                while True:
                    off, data = await queue.get()
                    if off > sent:
                        # fault injection, to prove dsbench-fanout notices broken delivery
                        if not (DROP_EVERY and off % DROP_EVERY == 0):
                            writer.write(chunk(frame(off, data)))
                            if DUPLICATE:
                                writer.write(chunk(frame(off, data)))
                        sent = off
                        if queue.empty():
                            await writer.drain()
            finally:
                waiters[path].discard(queue)
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    port = 0
    if "--port" in sys.argv:
        port = int(sys.argv[sys.argv.index("--port") + 1])
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print("listening on http://127.0.0.1:%d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
