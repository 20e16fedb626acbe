//! Fuzzes the daemon's SigV4 signer (`sandbox::proxy::policy::sigv4`) against the AWS SDK's own
//! (`aws-sigv4`, code the daemon does not share): for a request made of arbitrary path segments, query
//! parameters, signed headers with arbitrary spacing, an optional session token, S3 or another service,
//! both must compute the same signature. The canonical request is where signers go wrong (path
//! normalization and encoding, which S3 does without; query order and encoding; header value spacing), and
//! the signature covers all of it.
//!
//! Input: a flags byte (bit 0: S3, bit 1: a session token, bits 2-4: the method), then tokens, each a byte
//! picking from `PIECES` (or, above them, ending the path, a query name, a query value or a header).
//! Not generated, on purpose, where the two SDKs differ and the daemon follows botocore: a `+` in the
//! query (a literal plus, as S3 reads it; aws-sigv4 reads a space) and tabs in header values (botocore
//! makes any run of whitespace one space, aws-sigv4 only runs of spaces; HTTP strips tabs at either end
//! before the daemon sees a value). Nor bytes that are not a valid URI: hyper and h2 refuse them first.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials as SdkCredentials;
use aws_sigv4::http_request::{
    sign as sdk_sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use libfuzzer_sys::fuzz_target;
use sandbox::proxy::policy::sigv4::{sign, Credentials, PayloadHash, Request, Scope, SigningKeys};

const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "HEAD"];
/// What paths, query names and values are made of: unreserved characters, sub-delimiters, dot segments,
/// empty segments, percent-encoded bytes (reserved, unreserved, UTF-8) and raw UTF-8.
const PIECES: [&str; 24] = [
    "a", "Z", "0", "-", "_", "~", ".", "..", "/", "//", "%2F", "%3A", "%20", "%41", "%7E", "%25",
    "%C3%A9", "é", ":", "@", "!", "$", "*", ",",
];
const HEADER_NAMES: [&str; 4] = [
    "content-type",
    "x-amz-meta-a",
    "x-amz-target",
    "content-md5",
];
const HEADER_VALUES: [&str; 6] = ["v", " ", "  ", ",", "a b", "é"];
const TIME: u64 = 1_440_938_160;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, tokens)) = data.split_first() else {
        return;
    };
    let s3 = flags & 1 == 1;
    let method = METHODS[usize::from(flags >> 2) % METHODS.len()];
    let token = (flags & 2 == 2).then_some("session-token/with+chars=");
    let (host, service) = if s3 {
        ("bucket.s3.us-east-1.amazonaws.com", "s3")
    } else {
        ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock")
    };

    let mut path = String::from("/");
    let mut query: Vec<(String, String)> = Vec::new();
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut part = Part::Path;
    for &byte in tokens {
        let byte = usize::from(byte);
        if let Some(piece) = PIECES.get(byte) {
            match part {
                Part::Path => path.push_str(piece),
                Part::Name => query
                    .last_mut()
                    .expect("a name part has a pair")
                    .0
                    .push_str(piece),
                Part::Value => query
                    .last_mut()
                    .expect("a value part has a pair")
                    .1
                    .push_str(piece),
                Part::Header => {
                    let value = HEADER_VALUES[byte % HEADER_VALUES.len()];
                    headers
                        .last_mut()
                        .expect("a header part has a header")
                        .1
                        .push_str(value);
                }
            }
            continue;
        }
        part = match byte % 3 {
            0 => {
                query.push((String::new(), String::new()));
                Part::Name
            }
            1 if !query.is_empty() => Part::Value,
            _ => {
                let name = HEADER_NAMES[byte % HEADER_NAMES.len()];
                headers.push((name.to_string(), String::new()));
                Part::Header
            }
        };
    }
    // One of each name: HTTP joins repeated header fields with commas, a step both signers leave to
    // their caller.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers.dedup_by(|a, b| a.0 == b.0);
    // A value of spaces alone is an empty header, which HTTP/2 and hyper send as such.
    headers.retain(|(_, value)| !value.trim().is_empty());

    let mut target = path;
    if !query.is_empty() {
        target.push('?');
        let pairs: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        target.push_str(&pairs.join("&"));
    }
    let uri = format!("https://{host}{target}");
    let body = b"{}";
    let payload = PayloadHash::of_body(body);
    let time = UNIX_EPOCH + Duration::from_secs(TIME);

    let Ok(sdk) = sdk_signature(method, &uri, &headers, &payload, s3, token, service, time) else {
        // Not a URI the SDK takes: no HTTP client would send it either.
        return;
    };
    let credentials = Credentials {
        access_key_id: ACCESS_KEY_ID,
        secret_access_key: SECRET_ACCESS_KEY,
        session_token: token,
    };
    let scope = Scope {
        region: "us-east-1".to_string(),
        service: service.to_string(),
    };
    let request = Request {
        method: method.as_bytes(),
        target: target.as_bytes(),
        host: host.as_bytes(),
        payload: &payload,
    };
    let fields = headers
        .iter()
        .map(|(name, value)| (name.as_bytes(), value.as_bytes()));
    let signed = sign(
        &request,
        fields,
        &credentials,
        &scope,
        time,
        &mut SigningKeys::default(),
    )
    .expect("a request the SDK signs, the daemon signs");
    let authorization = signed
        .headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .and_then(|(_, value)| value.to_str().ok())
        .expect("the signature's headers hold an authorization");
    let ours = authorization
        .rsplit_once("Signature=")
        .map(|(_, signature)| signature)
        .expect("an authorization ends in its signature");
    assert_eq!(
        ours,
        sdk,
        "signatures differ for {method} {uri} {headers:?}; the daemon's canonical request:\n{}",
        String::from_utf8_lossy(&signed.canonical_request)
    );
});

enum Part {
    Path,
    Name,
    Value,
    Header,
}

const ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

#[allow(clippy::too_many_arguments)]
fn sdk_signature(
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    payload: &PayloadHash,
    s3: bool,
    token: Option<&str>,
    service: &str,
    time: SystemTime,
) -> Result<String, Box<dyn std::error::Error>> {
    let identity = SdkCredentials::new(
        ACCESS_KEY_ID,
        SECRET_ACCESS_KEY,
        token.map(str::to_string),
        None,
        "fuzz",
    )
    .into();
    let mut settings = SigningSettings::default();
    if s3 {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(service)
        .time(time)
        .settings(settings)
        .build()?
        .into();
    let request = SignableRequest::new(
        method,
        uri,
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
        SignableBody::Precomputed(payload.as_str().to_string()),
    )?;
    let (_, signature) = sdk_sign(request, &params)?.into_parts();
    Ok(signature)
}
