"""Token endpoints for the minted-secret tests: GitHub's installation tokens, an OAuth2 token endpoint
(client credentials, refresh tokens it rotates) and Google's JWT-bearer grant, plus an API that takes only
the tokens they issued and git's smart HTTP (run by `git http-backend`) behind the same check. JWTs are
checked with python3-cryptography, an RS256 implementation the daemon does not share.

Usage: tokens.py ADDRESSES CERT KEY LOG CONFIG

Listens on port 443 (CONFIG's "port" otherwise) of each of ADDRESSES (comma-separated; TLS, ALPN
http/1.1), prints "listening" once it does. CONFIG is a JSON file, every part optional:

  {"port": 443,
   "lifetime": 5,                  seconds every issued access token lives (integer)
   "accept": "current",            the API takes the latest unexpired token of its family ("current"),
                                   or any unexpired one it issued ("unexpired")
   "grace": 0,                     seconds "current" still takes the token the latest one replaced: a
                                   request sent just before its sender received the next token
   "control_file": "/path",        a JSON file read at each token request, as POST /control takes
   "issued_file": "/path",         every token issued, a JSON line each ({"serial", "family", "token"};
                                   rotated refresh tokens: serial 0, family "refresh"), for the test's
                                   leak checks (the only place a whole token is written)
   "git_root": "/path",            repositories served over git's smart HTTP (paths with ".git/")
   "github": {"app_id": "123456", "client_id": "Iv1.x", "installation_id": 7890123,
              "public_key": "/path/app.pem"},       (a public key PEM, or the private key's)
   "oauth2": {"clients": {"ID": {"secret": "S" or null, "auth": "basic" | "post" | "any"}},
              "refresh_tokens": ["rt-initial"],     refresh tokens valid at start
              "rotate": true},                      each refresh spends its token and issues the next
   "google": {"client_email": "robot@p.iam.gserviceaccount.com", "public_key": "/path/sa.pem",
              "token_uri": "https://HOST/google/token", "scopes": ["..."]}}  (scopes: checked if given)

Endpoints:
  POST [...]/app/installations/ID/access_tokens   GitHub: Bearer JWT (RS256 with the App's key; iss = app_id
        or client_id; iat <= now; exp > now; exp - iat <= 600 s). 201 {"token": ~520 chars, "expires_at"}.
        Refusals as GitHub: 401 {"message"}, 404 for another installation.
  POST /oauth2/token   client_credentials or refresh_token; client auth by basic (form-urlencoded id and
        secret), post, or client_id alone for a public client. 200 {"access_token", "token_type",
        "expires_in"[, "refresh_token"]}; 401 invalid_client; 400 invalid_grant (a spent or unknown
        refresh token), unsupported_grant_type.
  POST /google/token   grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer, assertion signed by the
        service account (iss = client_email, aud = token_uri, scope, iat <= now, exp > now,
        exp - iat <= 3600 s). 200 as OAuth2; 400 invalid_grant with Google's kind of description.
  GET|POST /api/...    Authorization: Bearer TOKEN, or Basic with password TOKEN (git's x-access-token):
        200 {"family", "serial"} if the token is accepted (see "accept"), else 401.
  GET|POST .../NAME.git/...   git's smart HTTP for GIT_ROOT/.../NAME.git, by `git http-backend` (CGI),
        once the token is accepted as by the API; else 401.
  POST /control        {"mode": M, "count": N, "retry_after": S, "sleep": S, "lifetime": S}: how the next
        N (default: all) token requests are answered (and how long their tokens live). M: "ok", "500", "empty" ({}), "html" (text/html), "429"
        (Retry-After: S), "no-expiry" (a token without expires_in / expires_at), "huge" (a 70 KiB body),
        "slow" (answer after S seconds), "down" (close the connection without answering). "empty",
        "html" and "huge" come with the success status of the endpoint (GitHub 201, others 200).
        GET /control says the mode in force. With "control_file", the file is read at each token
        request and is the mode in force ("count" is then not kept). {"revoke": true} instead makes
        every token issued so far unacceptable to the API (the mode stays).

Every request is a JSON line in LOG: {"time", "conn", "method", "path", "kind", "status", "mode", ...}
with, by kind: github (iss, installation, repositories, permissions, serial), oauth2 (grant_type,
client_id, auth, scope, params, spent / issued refresh token serials, serial), google (iss, scope, aud,
serial), api and git (family, serial, expired, current, accepted), error (why). Tokens are logged by
serial and a SHA-256 prefix ("sha"), never in full (but in "issued_file").
"""

import asyncio
import base64
import hashlib
import json
import secrets
import ssl
import string
import sys
import time
from datetime import datetime, timezone
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from http1 import read_request

ADDRESSES, CERT, KEY, LOG, CONFIG = sys.argv[1:6]

config = json.load(open(CONFIG))
log = open(LOG, "a", buffering=1)
LIFETIME = int(config.get("lifetime", 5))
ACCEPT = config.get("accept", "current")
GRACE = float(config.get("grace", 0))
issued_log = open(config["issued_file"], "a", buffering=1) if "issued_file" in config else None
GITHUB = config.get("github", {})
OAUTH2 = config.get("oauth2", {})
GOOGLE = config.get("google", {})

# token -> {"family", "serial", "expires", "issued"}; family -> serial of its latest token, and when the
# one before it stopped being the latest
issued = {}
latest = {}
replaced = {}
serials = 0
valid_refresh = {token: 0 for token in OAUTH2.get("refresh_tokens", [])}
control = {"mode": "ok"}
connections = 0


def public_key(path):
    pem = open(path, "rb").read()
    try:
        return serialization.load_pem_public_key(pem)
    except ValueError:
        return serialization.load_pem_private_key(pem, password=None).public_key()


GITHUB_KEY = public_key(GITHUB["public_key"]) if "public_key" in GITHUB else None
GOOGLE_KEY = public_key(GOOGLE["public_key"]) if "public_key" in GOOGLE else None


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def lifetime():
    """How long a token issued now lives: the config's "lifetime", unless POST /control said otherwise."""
    return float(control.get("lifetime", LIFETIME))


def issue(family, token):
    global serials
    serials += 1
    now = time.time()
    issued[token] = dict(family=family, serial=serials, expires=now + lifetime())
    if family in latest:
        replaced[family] = (latest[family], now)
    latest[family] = serials
    if issued_log:
        issued_log.write(json.dumps(dict(serial=serials, family=family, token=token)) + "\n")
    return serials


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_jwt(jwt, key, max_lifetime):
    """The claims of an RS256 JWT whose signature and times are good; raises ValueError saying why not."""
    try:
        head, payload, signature = jwt.split(".")
        header = json.loads(unb64(head))
        claims = json.loads(unb64(payload))
        signature = unb64(signature)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a JWT ({error})")
    if header.get("alg") != "RS256":
        raise ValueError(f"alg is {header.get('alg')!r}, not RS256")
    try:
        key.verify(signature, f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise ValueError("the signature does not verify")
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise ValueError("iat and exp must be integers")
    if iat > now:
        raise ValueError("iat is in the future")
    if exp <= now:
        raise ValueError("exp is in the past")
    if exp - iat > max_lifetime:
        raise ValueError(f"exp - iat is {exp - iat} s, over {max_lifetime} s")
    return claims


def json_answer(status, body, headers=()):
    return status, [("content-type", "application/json"), *headers], json.dumps(body).encode()


def failure_answer(control, family, entry):
    """The answer the control mode asks for instead of a token, or None to answer normally. A success
    without a usable token has GitHub's success status there (201), OAuth2's elsewhere (200)."""
    mode = control.get("mode", "ok")
    if mode in ("ok", "slow", "no-expiry", "down"):
        return None
    entry["failure"] = mode
    success = 201 if family == "github" else 200
    if mode == "500":
        return json_answer(500, {"error": "server_error"})
    if mode == "empty":
        return json_answer(success, {})
    if mode == "html":
        return success, [("content-type", "text/html")], b"<html><body>Sign in</body></html>"
    if mode == "429":
        retry = str(control.get("retry_after", 1))
        return json_answer(429, {"error": "slow_down"}, [("retry-after", retry)])
    if mode == "huge":
        return json_answer(success, {"padding": "x" * (70 * 1024)})
    return json_answer(500, {"error": f"unknown mode {mode}"})


def spend_mode():
    """Counts a token request against the mode's "count"; back to "ok" when it is used up."""
    global control
    mode = dict(control)
    if "count" in control:
        control["count"] -= 1
        if control["count"] <= 0:
            control = {"mode": "ok"}
    return mode


def github(target, headers, body, entry, mode):
    parts = target.rstrip("/").split("/")
    entry["installation"] = parts[-2]
    auth = headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        return json_answer(401, {"message": "A JSON web token could not be decoded"})
    try:
        claims = verify_jwt(auth[7:], GITHUB_KEY, 600)
    except ValueError as error:
        entry["why"] = str(error)
        return json_answer(401, {"message": f"JWT refused: {error}"})
    entry["iss"] = claims.get("iss")
    if str(claims.get("iss")) not in (str(GITHUB.get("app_id")), str(GITHUB.get("client_id"))):
        return json_answer(401, {"message": "'Issuer' claim ('iss') must be the App ID or client ID"})
    if parts[-2] != str(GITHUB.get("installation_id")):
        return json_answer(404, {"message": "Not Found"})
    if headers.get("accept") != "application/vnd.github+json" or "x-github-api-version" not in headers:
        entry["why"] = "missing Accept or X-GitHub-Api-Version"
    request = json.loads(body) if body else {}
    entry["repositories"] = request.get("repositories")
    entry["permissions"] = request.get("permissions")
    alphabet = string.ascii_letters + string.digits
    token = "ghs_" + "".join(secrets.choice(alphabet) for _ in range(516))
    entry["serial"], entry["sha"] = issue("github", token), sha(token)
    expires = datetime.fromtimestamp(issued[token]["expires"], timezone.utc)
    answer = {"token": token, "permissions": request.get("permissions", {}), "repository_selection": "all"}
    if mode.get("mode") != "no-expiry":
        answer["expires_at"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json_answer(201, answer)


def client_auth(headers, form, entry):
    """The client's id, or raises ValueError: basic (RFC 6749 2.3.1), post, or a public client's id."""
    clients = OAUTH2.get("clients", {})
    auth = headers.get("authorization", "")
    if auth.startswith("Basic "):
        pair = base64.b64decode(auth[6:]).decode()
        client_id, _, secret = pair.partition(":")
        client_id, secret, method = unquote_plus(client_id), unquote_plus(secret), "basic"
    elif "client_secret" in form:
        client_id, secret, method = form.get("client_id"), form["client_secret"], "post"
    else:
        client_id, secret, method = form.get("client_id"), None, "public"
    entry["client_id"], entry["auth"] = client_id, method
    client = clients.get(client_id)
    if client is None:
        raise ValueError("unknown client")
    if client.get("secret") != secret:
        raise ValueError("wrong secret")
    if client.get("secret") is not None and client.get("auth", "any") not in ("any", method):
        raise ValueError(f"this client authenticates with {client.get('auth')}, not {method}")
    return client_id


def token_answer(family, entry, mode, refresh=None):
    token = ("ya29." if family == "google" else "at-") + secrets.token_urlsafe(32)
    entry["serial"], entry["sha"] = issue(family, token), sha(token)
    answer = {"access_token": token, "token_type": "Bearer"}
    if mode.get("mode") != "no-expiry":
        answer["expires_in"] = int(lifetime())
    if refresh:
        answer["refresh_token"] = refresh
    return json_answer(200, answer)


def oauth2(headers, body, entry, mode):
    form = dict(parse_qsl(body.decode(), keep_blank_values=True))
    grant = form.get("grant_type")
    entry["grant_type"], entry["scope"] = grant, form.get("scope")
    known = {"grant_type", "scope", "client_id", "client_secret", "refresh_token"}
    entry["params"] = {k: v for k, v in form.items() if k not in known}
    try:
        client_auth(headers, form, entry)
    except ValueError as error:
        entry["why"] = str(error)
        return json_answer(401, {"error": "invalid_client", "error_description": str(error)})
    if grant == "client_credentials":
        return token_answer("oauth2", entry, mode)
    if grant != "refresh_token":
        return json_answer(400, {"error": "unsupported_grant_type"})
    spent = form.get("refresh_token", "")
    entry["spent"] = sha(spent)
    if spent not in valid_refresh:
        return json_answer(400, {"error": "invalid_grant", "error_description": "refresh token spent or unknown"})
    if not OAUTH2.get("rotate", True):
        return token_answer("oauth2", entry, mode)
    del valid_refresh[spent]
    nxt = "rt-" + secrets.token_urlsafe(24)
    valid_refresh[nxt] = 0
    if issued_log:
        issued_log.write(json.dumps(dict(serial=0, family="refresh", token=nxt)) + "\n")
    entry["issued_refresh"] = sha(nxt)
    return token_answer("oauth2", entry, mode, refresh=nxt)


def google(body, entry, mode):
    form = dict(parse_qsl(body.decode(), keep_blank_values=True))
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        return json_answer(400, {"error": "unsupported_grant_type"})
    try:
        claims = verify_jwt(form.get("assertion", ""), GOOGLE_KEY, 3600)
    except ValueError as error:
        entry["why"] = str(error)
        return json_answer(400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {error}"})
    entry.update(iss=claims.get("iss"), scope=claims.get("scope"), aud=claims.get("aud"))
    why = None
    if claims.get("iss") != GOOGLE.get("client_email"):
        why = "Invalid JWT: iss is not the service account"
    elif claims.get("aud") != GOOGLE.get("token_uri"):
        why = "Invalid JWT: aud is not the token URI"
    elif not claims.get("scope"):
        why = "Invalid JWT: no scope"
    elif "scopes" in GOOGLE and claims.get("scope") != " ".join(GOOGLE["scopes"]):
        why = "Invalid JWT: not the expected scopes"
    if why:
        entry["why"] = why
        return json_answer(400, {"error": "invalid_grant", "error_description": why})
    return token_answer("google", entry, mode)


def accepted_token(headers, entry):
    """The token the request carries, if the API takes it (see "accept" and "grace"); the entry says why."""
    auth = headers.get("authorization", "")
    token = None
    if auth.startswith("Bearer "):
        token = auth[7:]
    elif auth.startswith("Basic "):
        entry["user"], _, token = base64.b64decode(auth[6:]).decode().partition(":")
    known = issued.get(token)
    if known is None:
        entry.update(accepted=False, sha=sha(token) if token else None)
        return None
    now = time.time()
    family = known["family"]
    expired = known["expires"] <= now
    current = latest[family] == known["serial"]
    superseded = replaced.get(family)
    just_replaced = superseded is not None and superseded[0] == known["serial"] and now - superseded[1] <= GRACE
    accepted = not expired and not known.get("revoked") and (current or just_replaced or ACCEPT == "unexpired")
    entry.update(family=family, serial=known["serial"], sha=sha(token), expired=expired, current=current,
                 revoked=bool(known.get("revoked")), accepted=accepted)
    return known if accepted else None


def api(headers, entry):
    known = accepted_token(headers, entry)
    if known is None:
        return json_answer(401, {"message": "Bad credentials"})
    return json_answer(200, {"family": known["family"], "serial": known["serial"]})


async def git(method, target, headers, body, entry):
    """git's smart HTTP: `git http-backend` as a CGI program, for a request whose token is accepted."""
    if accepted_token(headers, entry) is None:
        return 401, [("content-type", "text/plain"), ("www-authenticate", 'Basic realm="GitHub"')], b"Bad credentials\n"
    parts = urlsplit(target)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "GIT_PROJECT_ROOT": config["git_root"],
        "GIT_HTTP_EXPORT_ALL": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "HOME": config["git_root"],
        "PATH_INFO": unquote_plus(parts.path),
        "QUERY_STRING": parts.query,
        "REQUEST_METHOD": method,
        "CONTENT_TYPE": headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": entry.get("user", ""),
        "REMOTE_ADDR": "127.0.0.1",
    }
    for name in ("content-encoding", "git-protocol"):
        if name in headers:
            env["HTTP_" + name.upper().replace("-", "_")] = headers[name]
    process = await asyncio.create_subprocess_exec(
        "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate(body)
    if err:
        entry["stderr"] = err.decode(errors="replace")[:300]
    separator = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
    head, _, cgi_body = out.partition(separator)
    status, cgi_headers = 200, []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            cgi_headers.append((name.strip().lower(), value.strip()))
    return status, cgi_headers, cgi_body


def read_control_file():
    """With a control file, the file is the mode: none is "ok"; one being written (not JSON yet) leaves
    the mode as it was."""
    global control
    path = config.get("control_file")
    if path:
        try:
            control = json.load(open(path))
        except FileNotFoundError:
            control = {"mode": "ok"}
        except (OSError, ValueError):
            pass


async def handle(method, target, headers, body, entry):
    """The answer to one request, or None to close the connection without one."""
    global control
    path = urlsplit(target).path
    token_kind = None
    if method == "POST" and path.endswith("/access_tokens") and "/app/installations/" in path:
        token_kind = "github"
    elif method == "POST" and path == "/oauth2/token":
        token_kind = "oauth2"
    elif method == "POST" and path == "/google/token":
        token_kind = "google"
    if token_kind:
        entry["kind"] = token_kind
        read_control_file()
        mode = spend_mode()
        entry["mode"] = mode.get("mode", "ok")
        if mode.get("mode") == "down":
            return None
        if mode.get("mode") == "slow":
            await asyncio.sleep(float(mode.get("sleep", 15)))
        answer = failure_answer(mode, token_kind, entry)
        if answer is None:
            if token_kind == "github":
                answer = github(path, headers, body, entry, mode)
            elif token_kind == "oauth2":
                answer = oauth2(headers, body, entry, mode)
            else:
                answer = google(body, entry, mode)
        return answer
    if path.startswith("/api/"):
        entry["kind"] = "api"
        return api(headers, entry)
    if ".git/" in path and "git_root" in config:
        entry["kind"] = "git"
        return await git(method, target, headers, body, entry)
    if path == "/control":
        entry["kind"] = "control"
        if method == "POST":
            asked = json.loads(body)
            if asked.get("revoke"):
                for known in issued.values():
                    known["revoked"] = True
            else:
                control = asked
        return json_answer(200, control)
    entry["kind"] = "error"
    return json_answer(404, {"message": "Not Found"})


async def serve(reader, writer):
    global connections
    connections += 1
    number = connections
    try:
        while True:
            method, target, headers, body = await read_request(reader)
            entry = dict(time=time.time(), conn=number, method=method, path=urlsplit(target).path)
            try:
                answer = await handle(method, target, headers, body, entry)
            except Exception as error:  # a malformed request is logged and answered, never fatal
                entry["why"] = f"{type(error).__name__}: {error}"
                answer = json_answer(400, {"error": "invalid_request"})
            if answer is None:
                entry["status"] = None
                log.write(json.dumps(entry) + "\n")
                break
            status, answer_headers, answer_body = answer
            entry["status"] = status
            # Logged before it is sent: a client that gave up (a slow answer) still has its line.
            log.write(json.dumps(entry) + "\n")
            out = [f"HTTP/1.1 {status} X", f"content-length: {len(answer_body)}"]
            out += [f"{name}: {value}" for name, value in answer_headers]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + answer_body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    context.set_alpn_protocols(["http/1.1"])
    port = int(config.get("port", 443))
    server = await asyncio.start_server(serve, ADDRESSES.split(","), port, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
