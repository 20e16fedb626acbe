"""An HTTP/1.1 upstream whose kept-alive connections close as the next request arrives: the race between an
upstream's keep-alive timeout and a client reusing the connection, made to happen every time.

Usage: h1_churn.py ADDRESSES CERT KEY LOG

Listens on port 443 of each of ADDRESSES (comma-separated; TLS, ALPN http/1.1 only). The first request
on each connection is answered (200, "ok X", keep-alive); any later request on it is read whole (head and
body) and the connection then closed without a byte of answer. Every request is a JSON line in LOG:
{"conn": N, "n": K, "method": M, "path": P, "id": X, "body": B, "answered": true|false}
(N counts connections from 1, K requests on the connection from 1, B is the body's length).
"""

import asyncio
import json
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

from http1 import read_request

ADDRESSES, CERT, KEY, LOG = sys.argv[1:5]

log = open(LOG, "a", buffering=1)
connections = 0


async def serve(reader, writer):
    global connections
    connections += 1
    number, n = connections, 0
    try:
        while True:
            method, target, _, body = await read_request(reader)
            n += 1
            url = urlsplit(target)
            rid = parse_qs(url.query).get("id", [""])[0]
            entry = dict(conn=number, n=n, method=method, path=url.path, id=rid, body=len(body))
            if n > 1:
                log.write(json.dumps(dict(answered=False, **entry)) + "\n")
                break
            answer = f"ok {rid}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            log.write(json.dumps(dict(answered=True, **entry)) + "\n")
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    context.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(serve, ADDRESSES.split(","), 443, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
