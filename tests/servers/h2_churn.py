"""An HTTP/2 upstream that goes away and refuses streams when told to, for the tests of requests sent again
on another connection. Built on python3-h2, an HTTP/2 implementation the daemon does not share.

Usage: h2_churn.py ADDRESSES CERT KEY LOG HOLD LAST

Listens on port 443 of each of ADDRESSES (comma-separated; TLS, ALPN h2). Every request it receives is a
JSON line in LOG:
{"conn": N, "stream": S, "method": M, "path": P, "id": X, "body": B, "answered": true|false}
(N counts connections from 1; B is the length of the request body; answered false: the request arrived
but was not processed).

  /now?id=X          answered at once (200, "ok X").
  /hold?id=X         held until HOLD requests are held on the connection. Then the held requests on the
                     LAST lowest streams are answered, and GOAWAY names the last of them as the last stream
                     processed (NO_ERROR): the others were not processed. The connection then closes. This
                     happens once: later /hold requests are answered at once.
  /refuse-once?id=X  the first time X arrives: RST_STREAM(REFUSED_STREAM); afterwards answered.
"""

import asyncio
import json
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

ADDRESSES, CERT, KEY, LOG = sys.argv[1:5]
HOLD, LAST = int(sys.argv[5]), int(sys.argv[6])

log = open(LOG, "a", buffering=1)
refused_ids = set()
connections = 0
went_away = False


def record(**fields):
    log.write(json.dumps(fields) + "\n")


class Connection:
    def __init__(self, number, writer):
        self.number = number
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.requests = {}  # stream -> [method, path, id, body length]
        self.held = []
        self.going_away = False

    def request_ended(self, stream):
        method, path, rid, body = self.requests.pop(stream)
        entry = dict(conn=self.number, stream=stream, method=method, path=path, id=rid, body=body)
        if path == "/hold" and not went_away:
            self.held.append((stream, entry))
            if len(self.held) == HOLD:
                self.go_away()
        elif path == "/refuse-once" and rid not in refused_ids:
            refused_ids.add(rid)
            self.h2.reset_stream(stream, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
            record(answered=False, **entry)
        else:
            self.answer(stream, entry)

    def answer(self, stream, entry):
        body = f"ok {entry['id']}\n".encode()
        headers = [(":status", "200"), ("content-length", str(len(body)))]
        self.h2.send_headers(stream, headers)
        self.h2.send_data(stream, body, end_stream=True)
        record(answered=True, **entry)

    def go_away(self):
        global went_away
        went_away = True
        self.held.sort()
        processed, unprocessed = self.held[:LAST], self.held[LAST:]
        for stream, entry in processed:
            self.answer(stream, entry)
        for _, entry in unprocessed:
            record(answered=False, **entry)
        self.h2.close_connection(error_code=0, last_stream_id=processed[-1][0])
        self.going_away = True

    def handle(self, events):
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                target = urlsplit(headers.get(":path", "/"))
                rid = parse_qs(target.query).get("id", [""])[0]
                self.requests[event.stream_id] = [headers.get(":method"), target.path, rid, 0]
                if event.stream_ended:
                    self.request_ended(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.requests:
                    self.requests[event.stream_id][3] += len(event.data)
                if event.stream_ended and event.stream_id in self.requests:
                    self.request_ended(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.requests:
                    self.request_ended(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)


async def serve(reader, writer):
    global connections
    connections += 1
    connection = Connection(connections, writer)
    connection.h2.initiate_connection()
    writer.write(connection.h2.data_to_send())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            try:
                events = connection.h2.receive_data(data)
            except h2.exceptions.ProtocolError as error:
                print(f"h2_churn.py: connection {connection.number}: {error!r}", file=sys.stderr)
                break
            connection.handle(events)
            writer.write(connection.h2.data_to_send())
            await writer.drain()
            if connection.going_away:
                # As nginx does once the streams it took are answered.
                break
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    context.set_alpn_protocols(["h2"])
    server = await asyncio.start_server(serve, ADDRESSES.split(","), 443, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
