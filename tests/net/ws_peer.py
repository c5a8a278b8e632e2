#!/usr/bin/python3
"""ws_peer.py - WebSocket echo and fault server for tests/net/test_ws_client.c.

Provides: a python3-websockets 10.4 server (run with /usr/bin/python3) on 127.0.0.1, its port
printed as "PORT=<n>" on stdout, written independently of the client under test. Behaviour
by request path:
  /echo         echoes every message (text stays text)
  /headers      sends the Authorization and X-Test request headers as "auth|xtest", then echoes
  /fragmented   answers each message with the same text sent in 7-byte fragments
  /close        answers the first message, then closes with code 4001 "bye"
  /drop         answers the first message, then aborts the TCP connection
  /big?n=N      sends one text message of N bytes on connect
  /stall        never answers the HTTP upgrade
  /reject       refuses the upgrade with HTTP 401
With --cert FILE --key FILE it serves wss:// (TLS) instead.
Must not: bind anything but 127.0.0.1.
"""
import argparse
import asyncio
import http
import ssl
import sys
import urllib.parse

import websockets


async def process_request(path, headers):
    u = urllib.parse.urlparse(path)
    if u.path == "/reject":
        return http.HTTPStatus.UNAUTHORIZED, [("Content-Type", "text/plain")], b"no\n"
    if u.path == "/stall":
        await asyncio.sleep(3600)
    return None


async def handler(ws, path):
    u = urllib.parse.urlparse(path)
    q = urllib.parse.parse_qs(u.query)
    try:
        if u.path == "/headers":
            await ws.send("%s|%s" % (ws.request_headers.get("Authorization"), ws.request_headers.get("X-Test")))
        if u.path == "/big":
            await ws.send("x" * int(q["n"][0]))
        async for msg in ws:
            if u.path == "/fragmented":
                await ws.send([msg[i:i + 7] for i in range(0, len(msg), 7)] or [""])
            else:
                await ws.send(msg)
            if u.path == "/close":
                await ws.close(4001, "bye")
                return
            if u.path == "/drop":
                await asyncio.sleep(0.05)
                ws.transport.abort()
                return
    except websockets.ConnectionClosed:
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    ctx = None
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
    async with websockets.serve(handler, "127.0.0.1", 0, process_request=process_request,
                                ping_interval=None, max_size=1 << 24, ssl=ctx) as server:
        print("PORT=%d" % server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
