//! What signing a request costs the daemon: the request policy's `AwsSigner` (the client's signature
//! checked and stripped, the scope found, the body hashed, the request signed) run many times on one thread
//! over the head of a small Bedrock-style request, as the daemon's request path runs it, and its CPU time
//! per request. `scripts/bench sigv4` prints it beside the daemon's CPU per request measured end to end,
//! where a few microseconds drown in the noise of a shared machine.
//!
//! Usage: cargo run --release --example sigv4_cost [REQUESTS]

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;
use sandbox::config::Config;
use sandbox::proxy::policy::sigv4::PayloadHash;
use sandbox::proxy::policy::{AwsSigner, Values};

const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const TARGET: &[u8] = b"/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke";
const BODY: &[u8] = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

/// The head an SDK sends with dummy credentials (botocore's fields, its signature over them).
fn client_headers() -> HeaderMap {
    let fields = [
        ("host", HOST),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        (
            "user-agent",
            "Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux lang/python#3.11.2",
        ),
        ("x-amz-date", "20260101T000000Z"),
        (
            "amz-sdk-invocation-id",
            "0b0c1d2e-3f40-4152-8364-758697a8b9ca",
        ),
        ("amz-sdk-request", "attempt=1"),
        ("content-length", "104"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=sandbox/20260101/us-east-1/bedrock/aws4_request, \
             SignedHeaders=accept;content-type;host;x-amz-date, \
             Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ];
    fields
        .into_iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect()
}

/// The CPU time (user and system) this thread has used.
fn thread_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("the thread's resource usage");
    let micros = (usage.user_time() + usage.system_time()).num_microseconds();
    Duration::from_micros(u64::try_from(micros).unwrap_or_default())
}

fn main() -> anyhow::Result<()> {
    let requests: u32 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 200_000,
    };
    // A throwaway key made now, the shape of a real one (40 characters of base64); the config names it,
    // as the daemon's would.
    let mut key = [0u8; 30];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    std::env::set_var("SIGV4_COST_SECRET", BASE64.encode(key));
    let config = Config::parse(
        &format!(
            r#"
[secrets]
aws = {{ env = "SIGV4_COST_SECRET" }}

[[integration]]
name = "aws"
hosts = ["{HOST}"]
aws_sigv4 = {{ access_key_id = "AKIASANDBOXBENCH0001", secret_access_key = "aws" }}

[[profile]]
name = "default"
integrations = ["aws"]
"#
        ),
        Path::new("sigv4_cost.toml"),
    )?;
    let secrets = config.load_secrets()?;
    let aws = config.integrations[0]
        .aws_sigv4
        .as_ref()
        .expect("the integration signs");
    let values = Values {
        integration: &config.integrations[0],
        secrets: &secrets,
        tokens: &[],
    };
    let client = client_headers();
    let sign_one = |headers: &mut HeaderMap| -> anyhow::Result<()> {
        let signer = AwsSigner::new(aws, &values, TARGET, headers, HOST)
            .map_err(|refusal| anyhow::anyhow!(refusal.message))?;
        let payload = match signer.payload() {
            Some(payload) => payload.clone(),
            None => PayloadHash::of_body(BODY),
        };
        signer
            .sign(b"POST", TARGET, HOST, &payload, headers)
            .map_err(|refusal| anyhow::anyhow!(refusal.message))
    };
    // What a request's head costs without signing (a copy of the client's), taken off the figure.
    let copy_only = {
        let start = thread_cpu();
        for _ in 0..requests {
            std::hint::black_box(client.clone());
        }
        thread_cpu() - start
    };
    let mut warm = client.clone();
    sign_one(&mut warm)?;
    let start = thread_cpu();
    for _ in 0..requests {
        let mut headers = client.clone();
        sign_one(&mut headers)?;
        std::hint::black_box(headers);
    }
    let signing = (thread_cpu() - start).saturating_sub(copy_only);
    println!(
        "{:.2} us of CPU per signed request ({requests} requests on one thread)",
        signing.as_secs_f64() * 1e6 / f64::from(requests)
    );
    Ok(())
}
