"""What the HTTP/1.1 test servers of this folder share: reading one request off a connection (its head,
and its body whether sent with Content-Length or chunked). Imported by the servers run as scripts from
here (Python puts a script's own folder on its path)."""


async def read_request(reader):
    """(method, target, headers with lower-case names, body) of the next request; raises
    asyncio.IncompleteReadError when the connection ends, ValueError on a malformed head."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers, await read_body(reader, headers)


async def read_body(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return body
            body += (await reader.readexactly(size + 2))[:-2]
    return await reader.readexactly(int(headers.get("content-length", "0")))
