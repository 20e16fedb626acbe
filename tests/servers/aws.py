"""AWS as the SigV4 tests need it: an S3 endpoint and a JSON API endpoint (Bedrock-style) that check every
request's signature with botocore's own signer (python3-botocore), code the daemon does not share.

Usage: aws.py [--port PORT] [--region REGION] [--h2] ADDRESSES CERT KEY LOG CREDENTIALS

Listens on PORT (443) of each of ADDRESSES (comma-separated; TLS with CERT and KEY, ALPN http/1.1, and h2
too with --h2: python3-h2).
CREDENTIALS is a JSON file {"access_key_id": ..., "secret_access_key": ..., "session_token": ...} (the
token optional): the real credentials, the only ones that verify; a file, so that the secret is in no
command line. REGION (us-east-1) is the region both endpoints are in. Prints "listening" once it is.

Each request is verified as AWS would: its Authorization (AWS4-HMAC-SHA256) must name the access key id,
a credential scope of REGION and the endpoint's service (s3, or bedrock), an x-amz-date within 15 minutes,
and a signature equal to the one botocore computes with the real credentials over the headers that its
SignedHeaders lists (S3SigV4Auth for S3: the path as sent; SigV4Auth otherwise: the path normalized and
encoded again), with the request's x-amz-date as the time and its x-amz-content-sha256 as the payload
hash when it sent one (else botocore hashes the body). The query is read as AWS reads it: name/value
pairs percent-decoded (a `+` is a plus), which botocore encodes again. A payload hash in hex must match
the body; a STREAMING-UNSIGNED-PAYLOAD-TRAILER body (aws-chunked) is decoded and its trailing checksum
(crc32, sha1, sha256) checked. Every x-amz-* header must be signed, and x-amz-security-token must be the
credentials' session token (or absent without one). Presigned URLs (SigV4 or SigV2) and chunk-signed
uploads are never verified (the daemon must not send them).

A request that does not verify is answered 403 with an AWS-style error (S3's XML; the JSON API's
x-amzn-ErrorType and JSON body) and changes nothing. Every request is a JSON line in LOG:
{"method": M, "path": P, "query": Q, "verified": true|false, "access_key_id": A, "reason": R,
 "status": S, "error": E, "service": "s3"|"bedrock", "signed_headers": H, "content_sha256": C, "body": B,
 "expected_canonical_request": X, "protocol": "HTTP/1.1"|"HTTP/2"}
A: the access key id the request was signed with, or null. R: why it did not verify, or "" when it did.
E: the AWS error code of the answer, or null. H: the SignedHeaders of its Authorization. C: its
x-amz-content-sha256, or null. B: the length of its body as decoded (aws-chunked removed). X: when the
signature differs, the canonical request botocore signed (to compare with the daemon's), else null.

The S3 endpoint (path-style, or virtual-hosted `<bucket>.s3[.-]...`), in memory: PUT/GET/HEAD/DELETE
object (GET with a Range), PUT/HEAD bucket, ListBuckets `GET /`, ListObjectsV2 `GET /<bucket>?list-type=2`
(prefix, delimiter), multipart uploads (create, upload part, complete, abort): what `aws s3 cp` and
`aws s3 ls` use. The JSON API: `POST /model/<id>/invoke` answers {"model": <id>, "input": <the request's
JSON>, "output": "ok"}.
"""

import argparse
import asyncio
import base64
import datetime
import hashlib
import hmac
import http
import json
import re
import ssl
import sys
import uuid
import zlib
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=443)
parser.add_argument("--region", default="us-east-1")
parser.add_argument("--h2", action="store_true")
parser.add_argument("addresses")
parser.add_argument("cert")
parser.add_argument("key")
parser.add_argument("log")
parser.add_argument("credentials")
ARGS = parser.parse_args()

with open(ARGS.credentials) as file:
    _real = json.load(file)
CREDENTIALS = Credentials(_real["access_key_id"], _real["secret_access_key"], _real.get("session_token"))

log = open(ARGS.log, "a", buffering=1)
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
SKEW = datetime.timedelta(minutes=15)
UNSIGNED = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")

buckets = {}  # name -> creation time
objects = {}  # (bucket, key) -> Object
uploads = {}  # upload id -> (bucket, key, content type, {part number: bytes})


class Object:
    def __init__(self, data, content_type):
        self.data = data
        self.content_type = content_type
        self.etag = '"%s"' % hashlib.md5(data).hexdigest()
        self.modified = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


class Refused(Exception):
    """Why a request does not verify: its status, AWS error code and message."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        # What botocore signed, when the signatures differ: to compare with what the daemon signed.
        self.canonical_request = None


class Request:
    def __init__(self, method, target, headers, body, protocol="HTTP/1.1"):
        self.protocol = protocol
        self.method = method
        self.target = target
        self.headers = headers  # [(name, value)] as received
        self.body = body  # as received (aws-chunked still encoded)
        split = urlsplit(target)
        self.path, self.query = split.path, split.query
        self.params = []
        for pair in self.query.split("&"):
            if pair:
                name, _, value = pair.partition("=")
                self.params.append((unquote(name), unquote(value)))

    def header(self, name):
        values = [value for key, value in self.headers if key.lower() == name]
        return ",".join(values) if values else None

    def param(self, name):
        return next((value for key, value in self.params if key == name), None)


# ---- verification ----


class ServerS3SigV4Auth(S3SigV4Auth):
    """S3's signer, but the payload hash is the one the request declares (botocore's own would compute
    it again as a client would), and the time is the request's."""

    def _modify_request_before_signing(self, request):
        SigV4Auth._modify_request_before_signing(self, request)


def expected_signature(request, service, signed_headers, amz_date):
    headers = [(name, value) for name, value in request.headers if name.lower() in signed_headers]
    host = request.header("host") or ""
    url = "https://%s%s" % (host, request.path or "/")
    aws_request = AWSRequest(method=request.method, url=url, data=request.body, params=list(request.params))
    for name, value in headers:
        if name.lower() != "x-amz-date":
            aws_request.headers.add_header(name, value)
    auth_class = ServerS3SigV4Auth if service == "s3" else SigV4Auth
    auth = auth_class(CREDENTIALS, service, ARGS.region)
    aws_request.context["timestamp"] = amz_date
    auth._modify_request_before_signing(aws_request)
    canonical_request = auth.canonical_request(aws_request)
    string_to_sign = auth.string_to_sign(aws_request, canonical_request)
    return auth.signature(string_to_sign, aws_request), canonical_request


def verify(request, service):
    """The access key id the request was signed with (or None), and the body as decoded; raises Refused
    when it does not verify."""
    names = {name.lower() for name, _ in request.params}
    if "x-amz-signature" in names or {"signature", "awsaccesskeyid"} <= names:
        raise Refused(403, "AccessDenied", "presigned URL: this test server does not take them")
    authorization = request.header("authorization")
    if not authorization:
        raise Refused(403, "AccessDenied", "no Authorization header")
    fields = {}
    algorithm, _, rest = authorization.strip().partition(" ")
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    credential = fields.get("Credential", "").split("/")
    if algorithm != "AWS4-HMAC-SHA256" or len(credential) != 5 or credential[4] != "aws4_request":
        message = "not an AWS4-HMAC-SHA256 Authorization: %s" % authorization
        raise Refused(400, "AuthorizationHeaderMalformed", message)
    access_key_id, date, region, scope_service, _ = credential
    if access_key_id != CREDENTIALS.access_key:
        raise Refused(403, "InvalidAccessKeyId", "unknown access key id %r" % access_key_id)
    if (region, scope_service) != (ARGS.region, service):
        raise Refused(
            403,
            "SignatureDoesNotMatch",
            "credential scope %s/%s, expected %s/%s" % (region, scope_service, ARGS.region, service),
        )
    signed_headers = set(fields.get("SignedHeaders", "").split(";"))
    for required in ("host", "x-amz-date"):
        if required not in signed_headers:
            raise Refused(403, "AccessDenied", "%s is not signed" % required)
    amz_date = request.header("x-amz-date") or ""
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Refused(403, "AccessDenied", "x-amz-date %r is not a time" % amz_date)
    if date != amz_date[:8]:
        raise Refused(403, "SignatureDoesNotMatch", "the scope's date is not x-amz-date's")
    if abs(datetime.datetime.now(datetime.timezone.utc) - when) > SKEW:
        raise Refused(403, "RequestTimeTooSkewed", "x-amz-date %s is more than 15 minutes away" % amz_date)
    for name, _ in request.headers:
        lower = name.lower()
        if lower.startswith("x-amz-") and lower not in signed_headers:
            raise Refused(403, "AccessDenied", "%s is not signed" % lower)
    token = request.header("x-amz-security-token")
    if token != CREDENTIALS.token:
        raise Refused(403, "InvalidToken", "x-amz-security-token is not the session token of the key")
    content_sha256 = request.header("x-amz-content-sha256")
    if service == "s3" and content_sha256 is None:
        raise Refused(400, "InvalidRequest", "x-amz-content-sha256 is missing")
    if (content_sha256 or "").startswith("STREAMING-") and content_sha256 not in UNSIGNED:
        raise Refused(403, "AccessDenied", "chunk-signed upload (%s): not taken here" % content_sha256)
    expected, canonical_request = expected_signature(request, service, signed_headers, amz_date)
    if not hmac.compare_digest(expected, fields.get("Signature", "")):
        refused = Refused(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
        refused.canonical_request = canonical_request
        raise refused
    body = request.body
    if content_sha256 == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
        body = decode_aws_chunked(request)
    elif content_sha256 is not None and content_sha256 not in UNSIGNED:
        if hashlib.sha256(body).hexdigest() != content_sha256:
            raise Refused(400, "XAmzContentSHA256Mismatch", "x-amz-content-sha256 is not the body's SHA-256")
    return access_key_id, body


def decode_aws_chunked(request):
    """The data of an aws-chunked body, its trailing checksum checked."""
    data, at, out, trailers = request.body, 0, bytearray(), {}
    try:
        while True:
            end = data.index(b"\r\n", at)
            size = int(data[at:end].split(b";")[0], 16)
            at = end + 2
            if size == 0:
                break
            out += data[at : at + size]
            if data[at + size : at + size + 2] != b"\r\n":
                raise ValueError("chunk not ended by CRLF")
            at += size + 2
        while True:
            end = data.index(b"\r\n", at)
            line, at = data[at:end], end + 2
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            trailers[name.strip().lower()] = value.strip()
    except ValueError as error:
        raise Refused(400, "IncompleteBody", "malformed aws-chunked body: %s" % error)
    decoded_length = request.header("x-amz-decoded-content-length")
    if decoded_length is not None and decoded_length != str(len(out)):
        message = "x-amz-decoded-content-length %s, got %d" % (decoded_length, len(out))
        raise Refused(400, "IncompleteBody", message)
    named = request.header("x-amz-trailer")
    if named and named.lower() not in trailers:
        raise Refused(400, "InvalidRequest", "trailer %s announced, not sent" % named)
    digests = {
        "x-amz-checksum-crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
        "x-amz-checksum-sha1": lambda data: hashlib.sha1(data).digest(),
        "x-amz-checksum-sha256": lambda data: hashlib.sha256(data).digest(),
    }
    for name, value in trailers.items():
        if name in digests and base64.b64encode(digests[name](bytes(out))).decode() != value:
            raise Refused(400, "BadDigest", "%s does not match the body" % name)
    return bytes(out)


# ---- the endpoints ----


def xml(root, inner):
    text = '<?xml version="1.0" encoding="UTF-8"?>\n<%s xmlns="%s">%s</%s>' % (root, S3_XMLNS, inner, root)
    return text.encode()


def s3_time(when):
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def s3_location(request):
    """(bucket, key): from a virtual-hosted name when the host has one, else from the path."""
    host = (request.header("host") or "").rsplit(":", 1)[0]
    path = unquote(request.path)
    virtual = re.match(r"^(.+?)\.s3[.-]", host)
    if virtual:
        return virtual.group(1), path[1:]
    bucket, _, key = path[1:].partition("/")
    return bucket, key


def s3(request, body):
    """(status, headers, body) of an S3 request that verified."""
    bucket, key = s3_location(request)
    method = request.method
    if not bucket:
        if method == "GET":
            listed = "".join(
                "<Bucket><Name>%s</Name><CreationDate>%s</CreationDate></Bucket>"
                % (escape(name), s3_time(made))
                for name, made in sorted(buckets.items())
            )
            owner = "<Owner><ID>sandbox-test</ID><DisplayName>sandbox-test</DisplayName></Owner>"
            return 200, {}, xml("ListAllMyBucketsResult", "%s<Buckets>%s</Buckets>" % (owner, listed))
        raise Refused(405, "MethodNotAllowed", "%s /" % method)
    if not key:
        if method == "PUT":
            buckets.setdefault(bucket, datetime.datetime.now(datetime.timezone.utc))
            return 200, {"Location": "/" + bucket}, b""
        if bucket not in buckets:
            raise Refused(404, "NoSuchBucket", "no bucket %s" % bucket)
        if method == "HEAD":
            return 200, {}, b""
        if method == "GET":
            return 200, {}, list_objects(request, bucket)
        raise Refused(405, "MethodNotAllowed", "%s on a bucket" % method)
    content_type = request.header("content-type") or "binary/octet-stream"
    upload_id = request.param("uploadId")
    if method == "POST" and request.param("uploads") is not None:
        buckets.setdefault(bucket, datetime.datetime.now(datetime.timezone.utc))
        upload_id = uuid.uuid4().hex
        uploads[upload_id] = (bucket, key, content_type, {})
        inner = "<Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId>" % (
            escape(bucket),
            escape(key),
            upload_id,
        )
        return 200, {}, xml("InitiateMultipartUploadResult", inner)
    if upload_id is not None:
        if upload_id not in uploads:
            raise Refused(404, "NoSuchUpload", "no upload %s" % upload_id)
        if method == "PUT":
            parts = uploads[upload_id][3]
            parts[int(request.param("partNumber") or "0")] = body
            return 200, {"ETag": '"%s"' % hashlib.md5(body).hexdigest()}, b""
        if method == "POST":
            bucket, key, content_type, parts = uploads.pop(upload_id)
            wanted = [int(number) for number in re.findall(rb"<PartNumber>(\d+)</PartNumber>", body)]
            if not wanted or any(number not in parts for number in wanted):
                raise Refused(400, "InvalidPart", "parts %s, uploaded %s" % (wanted, sorted(parts)))
            stored = Object(b"".join(parts[number] for number in wanted), content_type)
            objects[(bucket, key)] = stored
            inner = "<Bucket>%s</Bucket><Key>%s</Key><ETag>%s</ETag>" % (
                escape(bucket),
                escape(key),
                escape(stored.etag),
            )
            return 200, {}, xml("CompleteMultipartUploadResult", inner)
        if method == "DELETE":
            uploads.pop(upload_id)
            return 204, {}, b""
    if method == "PUT":
        buckets.setdefault(bucket, datetime.datetime.now(datetime.timezone.utc))
        stored = Object(body, content_type)
        objects[(bucket, key)] = stored
        return 200, {"ETag": stored.etag}, b""
    if method == "DELETE":
        objects.pop((bucket, key), None)
        return 204, {}, b""
    if method in ("GET", "HEAD"):
        stored = objects.get((bucket, key))
        if stored is None:
            raise Refused(404, "NoSuchKey", "no key %s in %s" % (key, bucket))
        headers = {
            "ETag": stored.etag,
            "Content-Type": stored.content_type,
            "Last-Modified": stored.modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "Accept-Ranges": "bytes",
        }
        data, status = stored.data, 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.header("range") or "")
        if ranged and stored.data:
            first = int(ranged.group(1))
            last = min(int(ranged.group(2) or len(data) - 1), len(data) - 1)
            if first > last:
                message = "range %s of %d bytes" % (request.header("range"), len(data))
                raise Refused(416, "InvalidRange", message)
            headers["Content-Range"] = "bytes %d-%d/%d" % (first, last, len(data))
            data, status = data[first : last + 1], 206
        return status, headers, data
    raise Refused(405, "MethodNotAllowed", "%s on an object" % method)


def list_objects(request, bucket):
    prefix = request.param("prefix") or ""
    delimiter = request.param("delimiter") or ""
    contents, prefixes = [], set()
    for (in_bucket, key), stored in sorted(objects.items()):
        if in_bucket != bucket or not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
            continue
        contents.append(
            "<Contents><Key>%s</Key><LastModified>%s</LastModified><ETag>%s</ETag><Size>%d</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            % (escape(key), s3_time(stored.modified), escape(stored.etag), len(stored.data))
        )
    common = "".join(
        "<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % escape(common) for common in sorted(prefixes)
    )
    inner = "<Name>%s</Name><Prefix>%s</Prefix><KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys>" % (
        escape(bucket),
        escape(prefix),
        len(contents) + len(prefixes),
    )
    if delimiter:
        inner += "<Delimiter>%s</Delimiter>" % escape(delimiter)
    inner += "<IsTruncated>false</IsTruncated>" + "".join(contents) + common
    return xml("ListBucketResult", inner)


def bedrock(request, body):
    match = re.fullmatch(r"/model/([^/]+)/invoke", request.path)
    if request.method != "POST" or not match:
        raise Refused(404, "UnknownOperationException", "no operation %s %s" % (request.method, request.path))
    try:
        received = json.loads(body or b"null")
    except ValueError:
        raise Refused(400, "ValidationException", "the body is not JSON")
    answer = {"model": unquote(match.group(1)), "input": received, "output": "ok"}
    return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


def error_answer(service, refused, request_id):
    if service == "s3":
        inner = "<Code>%s</Code><Message>%s</Message><RequestId>%s</RequestId>" % (
            refused.code,
            escape(refused.message),
            request_id,
        )
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>%s</Error>' % inner).encode()
        return refused.status, {"Content-Type": "application/xml"}, body
    codes = {
        "SignatureDoesNotMatch": "InvalidSignatureException",
        "InvalidAccessKeyId": "UnrecognizedClientException",
    }
    code = codes.get(refused.code, refused.code)
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code}
    return refused.status, headers, json.dumps({"message": refused.message}).encode()


def handle(request):
    service = "bedrock" if request.path.startswith("/model/") else "s3"
    request_id = uuid.uuid4().hex.upper()
    access_key_id, reason, error, verified, decoded = None, "", None, False, request.body
    canonical_request = None
    authorization = request.header("authorization") or ""
    credential = re.search(r"Credential=([^/,\s]*)", authorization)
    if credential:
        access_key_id = credential.group(1)
    try:
        access_key_id, decoded = verify(request, service)
        verified = True
        status, headers, body = (s3 if service == "s3" else bedrock)(request, decoded)
    except Refused as refused:
        # A request that verified may still fail (no such key): its error is logged, but is no reason.
        reason = "" if verified else refused.message
        error = refused.code
        canonical_request = refused.canonical_request
        status, headers, body = error_answer(service, refused, request_id)
    signed = re.search(r"SignedHeaders=([^,\s]*)", authorization)
    log.write(
        json.dumps(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "verified": verified,
                "access_key_id": access_key_id,
                "reason": reason,
                "status": status,
                "error": error,
                "service": service,
                "signed_headers": signed.group(1) if signed else None,
                "content_sha256": request.header("x-amz-content-sha256"),
                "body": len(decoded),
                "expected_canonical_request": canonical_request,
                "protocol": request.protocol,
            }
        )
        + "\n"
    )
    headers = dict(headers, **{"x-amz-request-id": request_id})
    return status, headers, body


# ---- HTTP/1.1 ----


async def read_body(reader, headers):
    names = {name.lower(): value for name, value in headers}
    if "chunked" in names.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.readexactly(int(names.get("content-length", "0")))


async def serve(reader, writer):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = []
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name.strip(), value.strip()))
            expect = any(n.lower() == "expect" and v.lower() == "100-continue" for n, v in headers)
            if expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            body = await read_body(reader, headers)
            request = Request(method, target, headers, body)
            status, answer_headers, answer = handle(request)
            phrase = http.HTTPStatus(status).phrase
            out = ["HTTP/1.1 %d %s" % (status, phrase)]
            out += ["%s: %s" % item for item in answer_headers.items()]
            out.append("Content-Length: %d" % len(answer))
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(answer)
            await writer.drain()
            if (request.header("connection") or "").lower() == "close":
                break
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


# ---- HTTP/2 ----


async def serve_h2(reader, writer):
    """Each stream's request, once it ended, answered whole; a response larger than the flow-control
    window waits for WINDOW_UPDATE."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    requests, pending = {}, {}  # stream id -> (headers, body); stream id -> response bytes left to send

    def flush(stream_id):
        data = pending[stream_id]
        while data:
            size = min(len(data), conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if size <= 0:
                break
            conn.send_data(stream_id, data[:size])
            data = data[size:]
        pending[stream_id] = data
        if not data:
            del pending[stream_id]
            conn.end_stream(stream_id)

    try:
        while True:
            writer.write(conn.data_to_send())
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    requests[event.stream_id] = (event.headers, bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    requests[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    fields, body = requests.pop(event.stream_id)
                    fields = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in fields]
                    pseudo = dict(field for field in fields if field[0].startswith(":"))
                    headers = [("host", pseudo.get(":authority", ""))]
                    headers += [field for field in fields if not field[0].startswith(":")]
                    request = Request(pseudo[":method"], pseudo[":path"], headers, bytes(body), "HTTP/2")
                    status, answer_headers, answer = handle(request)
                    out = [(":status", str(status))]
                    out += [(name.lower(), str(value)) for name, value in answer_headers.items()]
                    out.append(("content-length", str(len(answer))))
                    head_only = request.method == "HEAD" or not answer
                    conn.send_headers(event.stream_id, out, end_stream=head_only)
                    if not head_only:
                        pending[event.stream_id] = answer
                        flush(event.stream_id)
                elif isinstance(event, h2.events.WindowUpdated):
                    for stream_id in list(pending):
                        flush(stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve_any(reader, writer):
    protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    await (serve_h2 if protocol == "h2" else serve)(reader, writer)


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ARGS.cert, ARGS.key)
    context.set_alpn_protocols(["h2", "http/1.1"] if ARGS.h2 else ["http/1.1"])
    server = await asyncio.start_server(serve_any, ARGS.addresses.split(","), ARGS.port, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
