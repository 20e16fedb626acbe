//! AWS Signature Version 4: the daemon signs a request to AWS with the integration's real credentials, in
//! place of the signature the client inside made with any credentials it liked (DESIGN, "AWS SigV4").
//!
//! The request path uses it in this order, once the request's headers are as they will leave the daemon
//! (hop-by-hop headers gone, the integration's own headers set):
//! 1. [`check_not_presigned`] and [`PayloadHash::from_header`] (the client's `x-amz-content-sha256`, if
//!    it sent one): what cannot be re-signed is refused (400) before anything is sent upstream.
//! 2. [`Scope::resolve`]: region and service from the integration, else the client's credential scope,
//!    else the host name. The client's `Authorization` is read here, so before step 3.
//! 3. [`strip_client_signature`] (or [`is_client_signature`] for the HTTP/2 relay's decoded fields).
//! 4. [`sign`] with the headers as they leave, the authority they go to and the payload hash: the client's,
//!    else [`PayloadHash::of_body`] of the buffered body. It gives the headers to set ([`Signed::headers`]),
//!    each replacing any of its name.
//!
//! Which headers are signed ([`is_signed_header`]): `host`, `content-type`, `content-md5` and every
//! `x-amz-*`. That is what AWS requires (S3 wants `content-type` and `content-md5` too when present) and
//! no more: a SigV4 server checks only the headers that `SignedHeaders` lists, so a header left out cannot
//! break the signature, while one that changes between signing and arrival does. The SDKs sign nearly
//! everything; headers that the daemon's own HTTP stack may rewrite on the way out are exactly the ones they
//! get wrong (tokenizer's lesson): `content-length` and `transfer-encoding` (HTTP/1.1 and HTTP/2 frame bodies
//! differently), `cookie` (HTTP/2 may split it into crumbs, joined with `; ` not `,`), `user-agent`, `expect`,
//! the hop-by-hop headers. What the signature would add by covering them, integrity between the daemon and
//! AWS, TLS gives already; the sandbox writes the whole request anyway.
//!
//! Canonical URI: every service except S3 normalizes the path (RFC 3986 dot segments, empty segments
//! collapsed) and percent-encodes it once more as it is sent (so `%3A` is signed as `%253A`: AWS's "encoded
//! twice", counting the client's encoding). S3 (and its kin: [`Scope::is_s3`]) signs the path exactly as
//! sent, like botocore and the SDKs do. Canonical query: each `name=value` is percent-decoded and encoded
//! again strictly (unreserved characters as they are, everything else `%XY`), so a query the client encoded
//! its own way is signed as AWS reads it; `+` is a literal plus (`%2B`), as S3 reads it, not a space.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use super::Refusal;
// The config checks the integration's region and service by the same rule, and sits below the proxy.
use crate::config::is_aws_scope_name as is_scope_name;

/// The only algorithm this signer makes (SigV4a's ECDSA is not in scope).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

pub const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
pub const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
pub const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");

const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const STREAMING_UNSIGNED_PAYLOAD_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// The last second `x-amz-date` can write (9999-12-31T23:59:59Z).
const LAST_SECOND: u64 = 253_402_300_799;

/// Why a request cannot be signed. Each is an answer to the client ([`Error::status`]); the messages say
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("this is a presigned URL (a signature in its query: X-Amz-Signature, or SigV2's Signature and AWSAccessKeyId), signed with the client's key, and the daemon cannot re-sign it; send the request with no signature in its URL (let the SDK sign it with any credentials, the daemon signs it again with the real ones)")]
    Presigned,
    #[error("a chunk-signed upload (x-amz-content-sha256: {0}) carries a signature made with the client's key in every chunk, and the daemon cannot re-sign them; send an unsigned payload instead (UNSIGNED-PAYLOAD, or STREAMING-UNSIGNED-PAYLOAD-TRAILER: what current AWS SDKs and the aws CLI send over HTTPS)")]
    ChunkSigned(String),
    #[error("x-amz-content-sha256 {0:?} is none of: a SHA-256 in hex, UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER")]
    UnknownPayload(String),
    #[error("cannot tell the AWS {missing} of a request to {host}: set `{missing}` in the integration's aws_sigv4")]
    NoScope { missing: &'static str, host: String },
    #[error("the AWS {what} {value:?} is not a region or service name (lower-case letters, digits and '-')")]
    BadScope { what: &'static str, value: String },
    #[error("the {0} of the integration's aws_sigv4 cannot be sent in an HTTP header")]
    BadCredential(&'static str),
    #[error("the clock is outside the years 1970 to 9999")]
    Clock,
}

impl Error {
    /// The status the daemon answers with: 400 for what the client can change, 500 for the daemon's side.
    pub fn status(&self) -> u16 {
        match self {
            Error::Presigned | Error::ChunkSigned(_) | Error::UnknownPayload(_) => 400,
            Error::NoScope { .. } | Error::BadScope { .. } | Error::BadCredential(_) => 500,
            Error::Clock => 500,
        }
    }
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        Refusal {
            status: error.status(),
            message: format!("sandbox: {error}"),
        }
    }
}

/// The real credentials, borrowed from the secret store for one signature.
pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// Temporary credentials' token: sent (and signed) as `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

impl fmt::Debug for Credentials<'_> {
    /// The access key id is no secret (it names the key, and the signature carries it); the rest is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.map(|_| "<redacted>"))
            .finish()
    }
}

/// The region and service a signature is scoped to (`<date>/<region>/<service>/aws4_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub region: String,
    pub service: String,
}

impl Scope {
    /// Region and service each from the first that gives it: the integration's `region`/`service`, the
    /// client's credential scope (its `Authorization`: the SDK knows the service's signing name), the host
    /// name ([`Scope::from_host`]).
    pub fn resolve(
        region: Option<&str>,
        service: Option<&str>,
        authorization: Option<&[u8]>,
        host: &str,
    ) -> Result<Scope, Error> {
        for (what, value) in [("region", region), ("service", service)] {
            if let Some(value) = value.filter(|value| !is_scope_name(value)) {
                let value = value.to_string();
                return Err(Error::BadScope { what, value });
            }
        }
        let client = authorization.and_then(Scope::from_authorization);
        let named = Scope::from_host(host);
        let pick = |configured: Option<&str>, part: fn(Scope) -> String, missing| {
            configured
                .map(str::to_string)
                .or_else(|| client.clone().map(part))
                .or_else(|| named.clone().map(part))
                .ok_or_else(|| Error::NoScope {
                    missing,
                    host: host.to_string(),
                })
        };
        Ok(Scope {
            region: pick(region, |scope| scope.region, "region")?,
            service: pick(service, |scope| scope.service, "service")?,
        })
    }

    /// The scope of a client's `Authorization: AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/
    /// aws4_request, SignedHeaders=..., Signature=...`; None for anything else (SigV2, SigV4a, garbage).
    pub fn from_authorization(value: &[u8]) -> Option<Scope> {
        let value = std::str::from_utf8(value).ok()?;
        let rest = value.trim().strip_prefix(ALGORITHM)?;
        if !rest.starts_with(' ') {
            return None;
        }
        let credential = rest
            .split(',')
            .find_map(|part| part.trim().strip_prefix("Credential="))?;
        // From the right: an access key id is not ours to judge.
        let mut parts = credential.trim().rsplit('/');
        let (terminator, service, region) = (parts.next()?, parts.next()?, parts.next()?);
        let scope = Scope {
            region: region.to_string(),
            service: service.to_string(),
        };
        (terminator == "aws4_request" && is_scope_name(region) && is_scope_name(service))
            .then_some(scope)
    }

    /// The scope an AWS host name says (a port and a final dot are ignored; `.amazonaws.com` or
    /// `.amazonaws.com.cn`):
    /// - `<service>.<region>.amazonaws.com`, with `<service>-fips` and `<service>.dualstack` too; anything
    ///   before `<service>` is ignored (`bucket.s3.us-west-2...`, `runtime.sagemaker.us-east-1...`);
    /// - `s3.amazonaws.com`, `bucket.s3.amazonaws.com`, `s3-external-1.amazonaws.com`: s3 in us-east-1;
    ///   the legacy `s3-<region>.amazonaws.com` (and `bucket.s3-<region>...`): s3 in that region;
    /// - `<service>.amazonaws.com`: a global endpoint (iam, sts, ...), signed in us-east-1 (cn-north-1
    ///   for `.amazonaws.com.cn`).
    ///
    /// The endpoint name becomes the signing name, except where AWS names them apart: bedrock-runtime,
    /// bedrock-agent-runtime and bedrock-agent sign as bedrock; email as ses; s3-accesspoint and
    /// s3-control as s3. Other mismatches (data-ats.iot signs as iotdata, ...) need `service` configured;
    /// VPC endpoint names (`*.vpce.amazonaws.com`) say nothing usable and give None.
    pub fn from_host(host: &str) -> Option<Scope> {
        let host = host.to_ascii_lowercase();
        let host = strip_port(&host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let (rest, global) = if let Some(rest) = host.strip_suffix(".amazonaws.com") {
            (rest, "us-east-1")
        } else {
            (host.strip_suffix(".amazonaws.com.cn")?, "cn-north-1")
        };
        let labels: Vec<&str> = rest.split('.').collect();
        let (endpoint, region) = match labels.as_slice() {
            [.., endpoint, "dualstack", region] | [.., endpoint, region]
                if looks_like_region(region) =>
            {
                (*endpoint, *region)
            }
            [.., "s3" | "s3-external-1"] => ("s3", "us-east-1"),
            [.., last] if last.strip_prefix("s3-").is_some_and(looks_like_region) => {
                ("s3", &last[3..])
            }
            [endpoint] => (*endpoint, global),
            _ => return None,
        };
        let endpoint = endpoint.strip_suffix("-fips").unwrap_or(endpoint);
        let service = match endpoint {
            "bedrock-runtime" | "bedrock-agent-runtime" | "bedrock-agent" => "bedrock",
            "email" => "ses",
            "s3-accesspoint" | "s3-control" => "s3",
            other => other,
        };
        (is_scope_name(service) && is_scope_name(region)).then(|| Scope {
            region: region.to_string(),
            service: service.to_string(),
        })
    }

    /// S3 and the services that sign like it: the path is signed as sent (not normalized, not encoded
    /// again) and `x-amz-content-sha256` is always sent.
    pub fn is_s3(&self) -> bool {
        matches!(
            self.service.as_str(),
            "s3" | "s3-object-lambda" | "s3-outposts" | "s3express"
        )
    }
}

fn looks_like_region(label: &str) -> bool {
    // us-east-1, us-gov-west-1, cn-north-1, ap-southeast-2: a two-letter area, words, a number.
    let Some((words, number)) = label.rsplit_once('-') else {
        return false;
    };
    let words: Vec<&str> = words.split('-').collect();
    words.len() >= 2
        && words[0].len() == 2
        && words
            .iter()
            .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// What the last line of the canonical request says the body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadHash {
    /// The SHA-256 of the body in hex, as the client sent it or [`PayloadHash::of_body`] made it.
    Sha256(String),
    /// `UNSIGNED-PAYLOAD`: the body is not covered (S3 over HTTPS, as the SDKs do).
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: an aws-chunked body with a trailing checksum, not signed
    /// chunk by chunk (the aws CLI's uploads).
    StreamingUnsignedTrailer,
}

impl PayloadHash {
    /// The hash of a body the daemon buffered (a client that sent no `x-amz-content-sha256`).
    pub fn of_body(body: &[u8]) -> PayloadHash {
        PayloadHash::Sha256(hex(digest::digest(&digest::SHA256, body).as_ref()))
    }

    /// The client's `x-amz-content-sha256`, kept: it says what the body is. Chunk-signed bodies (each
    /// chunk signed with the client's key, also SigV4a's and event streams') cannot be re-signed.
    pub fn from_header(value: &[u8]) -> Result<PayloadHash, Error> {
        let text = String::from_utf8_lossy(value);
        match text.as_ref() {
            UNSIGNED_PAYLOAD => Ok(PayloadHash::Unsigned),
            STREAMING_UNSIGNED_PAYLOAD_TRAILER => Ok(PayloadHash::StreamingUnsignedTrailer),
            hash if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(PayloadHash::Sha256(hash.to_string()))
            }
            streaming if streaming.starts_with("STREAMING-") => {
                Err(Error::ChunkSigned(streaming.chars().take(64).collect()))
            }
            other => Err(Error::UnknownPayload(other.chars().take(100).collect())),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            PayloadHash::Sha256(hash) => hash,
            PayloadHash::Unsigned => UNSIGNED_PAYLOAD,
            PayloadHash::StreamingUnsignedTrailer => STREAMING_UNSIGNED_PAYLOAD_TRAILER,
        }
    }
}

/// Refuses a presigned URL: its signature is in the query, made with the client's key, and signing the
/// request again in headers would leave two signatures (AWS refuses that). SigV4's `X-Amz-Signature`, and
/// SigV2's `Signature` with `AWSAccessKeyId` (what `aws s3 presign` of aws-cli v1 makes); names in any case
/// or percent-encoding.
pub fn check_not_presigned(target: &[u8]) -> Result<(), Error> {
    let query = split_target(target).1.unwrap_or_default();
    let names: Vec<Vec<u8>> = query
        .split(|&b| b == b'&')
        .map(|pair| percent_decode(pair.split(|&b| b == b'=').next().unwrap_or_default()))
        .collect();
    let named = |wanted: &str| {
        names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(wanted.as_bytes()))
    };
    if named("x-amz-signature") || (named("signature") && named("awsaccesskeyid")) {
        Err(Error::Presigned)
    } else {
        Ok(())
    }
}

/// The headers of the client's own signature, which go before the daemon signs: `authorization`,
/// `x-amz-date`, `x-amz-security-token` (the client's token belongs to its own credentials). Not
/// `x-amz-content-sha256`: it says what the body is, and is kept (and signed).
pub fn is_client_signature(name: &[u8]) -> bool {
    [
        b"authorization".as_slice(),
        b"x-amz-date",
        b"x-amz-security-token",
    ]
    .iter()
    .any(|signature| name.eq_ignore_ascii_case(signature))
}

/// Removes the client's signature ([`is_client_signature`]) from a request's headers.
pub fn strip_client_signature(headers: &mut HeaderMap) {
    headers.remove(http::header::AUTHORIZATION);
    headers.remove(X_AMZ_DATE);
    headers.remove(X_AMZ_SECURITY_TOKEN);
}

/// Whether the daemon signs a header of this (lower-case) name, besides `host`: see the module's doc.
pub fn is_signed_header(name: &[u8]) -> bool {
    name == b"content-type" || name == b"content-md5" || name.starts_with(b"x-amz-")
}

/// A `HeaderMap`'s fields as [`sign`] takes them.
pub fn header_fields(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
}

/// The request as it leaves the daemon, besides its header fields.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The path and query (origin form) exactly as sent upstream.
    pub target: &'a [u8],
    /// The `Host` / `:authority` exactly as sent upstream (with a port when it has one).
    pub host: &'a [u8],
    pub payload: &'a PayloadHash,
}

/// A signature: the headers to set, and what was signed.
pub struct Signed {
    /// `authorization`, `x-amz-date`, `x-amz-security-token` with a session token, `x-amz-content-sha256`
    /// where it is signed (S3, or the client sent one): each replaces any header of its name. The token's
    /// value is marked sensitive (never HPACK-indexed).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The canonical request. Never the secret access key, but it holds the session token when there is
    /// one (`x-amz-security-token` is signed): not for logs. Zeroed on drop.
    pub canonical_request: Zeroizing<Vec<u8>>,
    /// The string to sign: algorithm, time, scope, the canonical request's hash.
    pub string_to_sign: String,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Signed")
            .field("headers", &names)
            .field("string_to_sign", &self.string_to_sign)
            .finish_non_exhaustive()
    }
}

/// Signs `request`, whose header fields (name, value; in the order sent) are `headers`: the fields as they
/// will leave the daemon, the client's signature already stripped. `host`, `authorization` and the
/// fields the signature sets are taken from `request` and the signature, never from `headers`. The
/// signing key comes from `keys` when it was derived there before (same key, day, region, service).
pub fn sign<'h>(
    request: &Request<'_>,
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    credentials: &Credentials<'_>,
    scope: &Scope,
    time: SystemTime,
    keys: &mut SigningKeys,
) -> Result<Signed, Error> {
    sign_with(
        &Rules::for_scope(scope),
        request,
        headers,
        credentials,
        scope,
        time,
        keys,
    )
}

/// How a canonical request is made. [`sign`] takes them from the service; the test suite sets each.
struct Rules {
    /// Remove dot segments and empty segments from the path.
    normalize_path: bool,
    /// Percent-encode the path as sent once more (every service but S3).
    encode_path: bool,
    /// Send and sign `x-amz-content-sha256` even when the client did not.
    content_sha256: bool,
    /// Which of the request's fields are signed (lower-case names).
    signed: fn(&[u8]) -> bool,
}

impl Rules {
    fn for_scope(scope: &Scope) -> Rules {
        let s3 = scope.is_s3();
        Rules {
            normalize_path: !s3,
            encode_path: !s3,
            content_sha256: s3,
            signed: is_signed_header,
        }
    }
}

fn sign_with<'h>(
    rules: &Rules,
    request: &Request<'_>,
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    credentials: &Credentials<'_>,
    scope: &Scope,
    time: SystemTime,
    keys: &mut SigningKeys,
) -> Result<Signed, Error> {
    let token = check_inputs(credentials, scope)?;
    let (amz_date, date) = amz_date(time)?;
    let (fields, mut set) = canonical_headers(rules, request, headers, &amz_date, token)?;
    let (canonical, signed_headers) = canonical_request(rules, request, &fields);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = string_to_sign(&amz_date, &credential_scope, &canonical);
    let signature = signature(&keys.key(credentials, &date, scope), &string_to_sign);
    let authorization = authorization(
        credentials.access_key_id,
        &credential_scope,
        &signed_headers,
        &signature,
    )?;
    set.insert(0, (http::header::AUTHORIZATION, authorization));
    Ok(Signed {
        headers: set,
        canonical_request: canonical,
        string_to_sign,
    })
}

/// What must hold before anything is signed: a scope of names, an access key id that fits in
/// `Credential=` (no `/`, `,`, `=` or spaces), a session token that fits in a header. The token's
/// header value, marked sensitive (never HPACK-indexed), if there is one.
fn check_inputs(
    credentials: &Credentials<'_>,
    scope: &Scope,
) -> Result<Option<HeaderValue>, Error> {
    for (what, value) in [("region", &scope.region), ("service", &scope.service)] {
        if !is_scope_name(value) {
            let value = value.clone();
            return Err(Error::BadScope { what, value });
        }
    }
    let access_key_id = credentials.access_key_id;
    if access_key_id.is_empty()
        || !access_key_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b'='))
    {
        return Err(Error::BadCredential("access_key_id"));
    }
    match credentials.session_token {
        Some(token) => {
            let mut value =
                HeaderValue::from_str(token).map_err(|_| Error::BadCredential("session_token"))?;
            value.set_sensitive(true);
            Ok(Some(value))
        }
        None => Ok(None),
    }
}

/// Lower-case name -> its values in order; a BTreeMap sorts by name as AWS does (byte order).
type CanonicalHeaders = BTreeMap<Vec<u8>, Vec<Vec<u8>>>;

/// The signed header fields, canonical (the request's that [`Rules::signed`] picks, `host`, and those
/// the signature sets), and the headers the signature sets: `x-amz-date`, the session token's, and
/// `x-amz-content-sha256` where the service wants it or the client sent it.
fn canonical_headers<'h>(
    rules: &Rules,
    request: &Request<'_>,
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    amz_date: &str,
    token: Option<HeaderValue>,
) -> Result<(CanonicalHeaders, Vec<(HeaderName, HeaderValue)>), Error> {
    let mut fields = CanonicalHeaders::new();
    fields.insert(b"host".to_vec(), vec![canonical_value(request.host)]);
    let mut client_content_sha256 = false;
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name == X_AMZ_CONTENT_SHA256.as_str().as_bytes() {
            client_content_sha256 = true;
        }
        let own = name == b"host"
            || name == b"authorization"
            || name == X_AMZ_DATE.as_str().as_bytes()
            || name == X_AMZ_SECURITY_TOKEN.as_str().as_bytes()
            || name == X_AMZ_CONTENT_SHA256.as_str().as_bytes();
        if !own && (rules.signed)(&name) {
            fields.entry(name).or_default().push(canonical_value(value));
        }
    }
    // Room for authorization too, which goes first once the signature is made.
    let mut set = Vec::with_capacity(4);
    let date_value = HeaderValue::from_str(amz_date).map_err(|_| Error::Clock)?;
    fields.insert(
        X_AMZ_DATE.as_str().into(),
        vec![amz_date.as_bytes().to_vec()],
    );
    set.push((X_AMZ_DATE, date_value));
    if let Some(token) = token {
        fields.insert(
            X_AMZ_SECURITY_TOKEN.as_str().into(),
            vec![canonical_value(token.as_bytes())],
        );
        set.push((X_AMZ_SECURITY_TOKEN, token));
    }
    if rules.content_sha256 || client_content_sha256 {
        let payload = request.payload.as_str();
        // A payload hash is ASCII by construction (from_header checked the client's).
        let value =
            HeaderValue::from_str(payload).map_err(|_| Error::UnknownPayload(payload.into()))?;
        fields.insert(
            X_AMZ_CONTENT_SHA256.as_str().into(),
            vec![payload.as_bytes().to_vec()],
        );
        set.push((X_AMZ_CONTENT_SHA256, value));
    }
    Ok((fields, set))
}

/// The canonical request (method, canonical URI, canonical query, canonical headers, signed headers,
/// payload hash; zeroed on drop: it holds the session token) and its signed headers' list.
fn canonical_request(
    rules: &Rules,
    request: &Request<'_>,
    fields: &CanonicalHeaders,
) -> (Zeroizing<Vec<u8>>, String) {
    let (path, query) = split_target(request.target);
    let mut canonical = Zeroizing::new(Vec::with_capacity(512));
    canonical.extend_from_slice(request.method);
    canonical.push(b'\n');
    canonical_uri(path, rules, &mut canonical);
    canonical.push(b'\n');
    canonical_query(query.unwrap_or_default(), &mut canonical);
    canonical.push(b'\n');
    let mut signed_headers = String::new();
    for (name, values) in fields {
        canonical.extend_from_slice(name);
        canonical.push(b':');
        canonical.extend_from_slice(&values.join(&b','));
        canonical.push(b'\n');
        if !signed_headers.is_empty() {
            signed_headers.push(';');
        }
        // Names came from HeaderName-valid bytes or our constants: ASCII.
        signed_headers.push_str(&String::from_utf8_lossy(name));
    }
    canonical.push(b'\n');
    canonical.extend_from_slice(signed_headers.as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(request.payload.as_str().as_bytes());
    (canonical, signed_headers)
}

/// The string to sign: the algorithm, the time, the credential scope and the canonical request's hash.
fn string_to_sign(amz_date: &str, credential_scope: &str, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{credential_scope}\n{}",
        hex(sha256(canonical_request).as_ref())
    )
}

/// The signature: HMAC-SHA256 of the string to sign under `kSigning`, in hex.
fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex(hmac_sha256(signing_key, string_to_sign.as_bytes()).as_ref())
}

/// The `Authorization` value that carries the signature.
fn authorization(
    access_key_id: &str,
    credential_scope: &str,
    signed_headers: &str,
    signature: &str,
) -> Result<HeaderValue, Error> {
    let value = format!(
        "{ALGORITHM} Credential={access_key_id}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    HeaderValue::from_str(&value).map_err(|_| Error::BadCredential("access_key_id"))
}

/// How many signing keys [`SigningKeys`] holds: a few integrations, each over a day boundary.
const MAX_SIGNING_KEYS: usize = 16;

/// Signing keys derived lately. A signature's key (`kSigning`) is four HMACs away from the secret
/// access key (over the date, the region, the service, `aws4_request`) and the same for a whole day:
/// kept, a request costs one HMAC rather than five (most of the signer's time). Bounded: past
/// [`MAX_SIGNING_KEYS`], another day's keys go first, then the oldest. Every key is zeroed when it goes.
#[derive(Default)]
pub struct SigningKeys {
    keys: Vec<SigningKey>,
}

struct SigningKey {
    date: String,
    region: String,
    service: String,
    access_key_id: String,
    /// The SHA-256 of the secret access key it was derived from: a key rotated under the same id (a
    /// secret file rewritten, a new minted value) derives a new one.
    secret: Zeroizing<[u8; 32]>,
    key: Zeroizing<[u8; 32]>,
}

impl SigningKeys {
    /// `kSigning` for these credentials on `date` (`20150830`) in `scope`.
    fn key(
        &mut self,
        credentials: &Credentials<'_>,
        date: &str,
        scope: &Scope,
    ) -> Zeroizing<[u8; 32]> {
        let secret = sha256(credentials.secret_access_key.as_bytes());
        let found = self.keys.iter().find(|kept| {
            kept.date == date
                && kept.region == scope.region
                && kept.service == scope.service
                && kept.access_key_id == credentials.access_key_id
                && *kept.secret == *secret
        });
        if let Some(kept) = found {
            return kept.key.clone();
        }
        let key = derive_signing_key(credentials.secret_access_key, date, scope);
        if self.keys.len() >= MAX_SIGNING_KEYS {
            self.keys.retain(|kept| kept.date == date);
        }
        if self.keys.len() >= MAX_SIGNING_KEYS {
            self.keys.remove(0);
        }
        self.keys.push(SigningKey {
            date: date.to_string(),
            region: scope.region.clone(),
            service: scope.service.clone(),
            access_key_id: credentials.access_key_id.to_string(),
            secret,
            key: key.clone(),
        });
        key
    }
}

/// `kSigning` = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn derive_signing_key(secret_access_key: &str, date: &str, scope: &Scope) -> Zeroizing<[u8; 32]> {
    let mut secret = Zeroizing::new(Vec::with_capacity(4 + secret_access_key.len()));
    secret.extend_from_slice(b"AWS4");
    secret.extend_from_slice(secret_access_key.as_bytes());
    let key = hmac_sha256(&secret, date.as_bytes());
    let key = hmac_sha256(key.as_ref(), scope.region.as_bytes());
    let key = hmac_sha256(key.as_ref(), scope.service.as_bytes());
    hmac_sha256(key.as_ref(), b"aws4_request")
}

/// `x-amz-date` (`20150830T123600Z`) and the scope's date (`20150830`).
fn amz_date(time: SystemTime) -> Result<(String, String), Error> {
    // humantime formats only 1970..=9999, and panics (or fails) outside.
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Clock)?
        .as_secs();
    if seconds > LAST_SECOND {
        return Err(Error::Clock);
    }
    let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
    let amz_date: String = rfc3339.chars().filter(|&c| c != '-' && c != ':').collect();
    let date = amz_date.get(..8).ok_or(Error::Clock)?.to_string();
    Ok((amz_date, date))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    copy32(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref())
}

fn sha256(data: &[u8]) -> Zeroizing<[u8; 32]> {
    copy32(digest::digest(&digest::SHA256, data).as_ref())
}

fn copy32(bytes: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    for (out, byte) in out.iter_mut().zip(bytes) {
        *out = *byte;
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// The path and the query (without its `?`) of a request target.
fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|&b| b == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    }
}

/// A header value as signed: trimmed, each run of spaces and tabs one space.
fn canonical_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for word in value
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|word| !word.is_empty())
    {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out
}

fn canonical_uri(path: &[u8], rules: &Rules, out: &mut Vec<u8>) {
    let normalized;
    let path = if rules.normalize_path {
        normalized = normalize_path(path);
        &normalized[..]
    } else if path.is_empty() {
        b"/"
    } else {
        path
    };
    if rules.encode_path {
        percent_encode(path, true, out);
    } else {
        out.extend_from_slice(path);
    }
}

/// RFC 3986 5.2.4 dot segments removed, empty segments dropped, a trailing slash kept where the path
/// ends in a directory (`/a/.`, `/a/..`, `/a/`): what AWS's signers do for every service but S3.
fn normalize_path(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    let directory = [b"/".as_slice(), b"/.", b"/.."]
        .iter()
        .any(|end| path.ends_with(end));
    if out.is_empty() || directory {
        out.push(b'/');
    }
    out
}

/// Name/value pairs decoded and encoded again, sorted by encoded name, then value.
fn canonical_query(query: &[u8], out: &mut Vec<u8>) {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            let mut encoded_name = Vec::with_capacity(name.len());
            percent_encode(&percent_decode(name), false, &mut encoded_name);
            let mut encoded_value = Vec::with_capacity(value.len());
            percent_encode(&percent_decode(value), false, &mut encoded_value);
            (encoded_name, encoded_value)
        })
        .collect();
    pairs.sort();
    for (at, (name, value)) in pairs.iter().enumerate() {
        if at > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(name);
        out.push(b'=');
        out.extend_from_slice(value);
    }
}

/// RFC 3986 unreserved characters as they are, every other byte `%XY` (upper-case hex); `/` kept in paths.
fn percent_encode(bytes: &[u8], keep_slash: bool, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(byte);
        } else {
            out.extend_from_slice(&[
                b'%',
                DIGITS[usize::from(byte >> 4)],
                DIGITS[usize::from(byte & 0xf)],
            ]);
        }
    }
}

/// `%XY` decoded; a `%` not followed by two hex digits stays as it is (and is signed as `%25`).
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    fn value(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|v| v as u8)
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let decoded = match bytes.get(at..at + 3) {
            Some([b'%', high, low]) => value(*high).zip(value(*low)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
