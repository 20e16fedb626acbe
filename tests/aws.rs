//! End-to-end tests of AWS Signature Version 4 (DESIGN, "AWS SigV4"; issue 24): the aws CLI runs in a
//! sandbox, unmodified, with dummy credentials (`AWS_ACCESS_KEY_ID=sandbox`), against a test S3 and a
//! Bedrock-style JSON API that verify every signature with botocore (tests/servers/aws.py) and know only
//! the real key; the daemon signs each request with it. What cannot be signed (presigned URLs,
//! chunk-signed uploads, bodies over 16 MiB without their hash) gets 400 or 413 with what to do, and
//! reaches no server. HTTP/2 clients are signed too. The real secret access key and session token are
//! nowhere the sandbox, the daemon's log or the audit log can show.
//!
//! Everything the sandbox runs is Debian's (scripts/test installs it with apt-get, never from PyPI): the aws
//! CLI (awscli 2.9.19: `s3 cp` uploads with UNSIGNED-PAYLOAD; `s3api put-object --checksum-algorithm` with
//! STREAMING-UNSIGNED-PAYLOAD-TRAILER, aws-chunked with a CRC32 trailer, as current CLIs and SDKs upload by
//! default) and, for Bedrock (which that CLI does not know), [`INVOKE_MODEL`]: a python3 client signing
//! with python3-botocore's SigV4Auth. Root only; all traffic stays inside the test's namespaces.

mod common;

use std::time::Duration;

use common::aws::*;
use common::*;
use serde_json::Value;

/// Bedrock's InvokeModel as an SDK sends it, which Debian's aws CLI cannot: a POST of a JSON body to
/// `/model/<id>/invoke` (the id's ':' percent-encoded, as the SDKs encode a path label) of
/// `bedrock-runtime.<region>.amazonaws.com`, signed for `bedrock` by python3-botocore's SigV4Auth with the
/// environment's (dummy) credentials and region. Prints the status, then the answer.
const INVOKE_MODEL: &str = r#"
import json, sys
from urllib.parse import quote
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import URLLib3Session

session = botocore.session.get_session()
region = session.get_config_variable("region")
model = "anthropic.claude-v2:1"
url = "https://bedrock-runtime.%s.amazonaws.com/model/%s/invoke" % (region, quote(model, safe=""))
body = json.dumps({"prompt": "héllo & <bye>?", "max_tokens": 5}, ensure_ascii=False).encode()
headers = {"Content-Type": "application/json", "Accept": "application/json"}
request = AWSRequest(method="POST", url=url, data=body, headers=headers)
SigV4Auth(session.get_credentials(), "bedrock", region).add_auth(request)
verify = session.get_config_variable("ca_bundle") or True
answer = URLLib3Session(verify=verify).send(request.prepare())
print(answer.status_code)
print(answer.content.decode())
sys.exit(answer.status_code != 200)
"#;
/// How long a script of aws CLI commands may take (each starts Python and botocore: a second or more).
const CLI_TIMEOUT: Duration = Duration::from_secs(240);

/// `sandbox exec` with the environment an agent runner sets for the aws CLI and SDKs: any credentials.
fn aws_exec(d: &Daemon, script: &str) -> std::process::Output {
    d.exec(&test_user())
        .env("AWS_ACCESS_KEY_ID", "sandbox")
        .env("AWS_SECRET_ACCESS_KEY", "sandbox")
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_PAGER", "")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["sh", "-c", script])
        .timeout(CLI_TIMEOUT)
        .run()
}

/// The AWS test servers in U (S3 on `.21`, Bedrock on `.22`) and a daemon whose integration `aws` signs
/// for them; `test` runs with them, then the daemon is checked to have kept the secrets and stopped.
fn with_aws(test: impl FnOnce(&Daemon, &Aws, &AwsServer, &AwsServer)) {
    let net = TestNet::new();
    let aws = Aws::new();
    let s3 = AwsServer::s3(&net, &aws, 21);
    let bedrock = AwsServer::bedrock(&net, &aws, 22);
    let d = aws.configure(net.daemon()).start();
    test(&d, &aws, &s3, &bedrock);
    assert_daemon_kept_the_secrets(&d, &aws);
    d.finish();
}

/// What a shell script of `echo "--- NAME"; command` steps printed (stdout, then stderr), once it ran
/// to its `--- end` and exited 0.
struct Script(String);

impl Script {
    fn run(d: &Daemon, script: &str) -> Script {
        let o = aws_exec(d, script);
        let all = format!("{}\n{}", stdout(&o), stderr(&o));
        assert_code(&o, 0);
        assert!(all.contains("--- end"), "{}", describe(&o));
        Script(all)
    }

    /// What the step NAME printed.
    fn section(&self, name: &str) -> &str {
        self.0
            .split(&format!("--- {name}\n"))
            .nth(1)
            .and_then(|rest| rest.split("\n--- ").next())
            .unwrap_or_default()
    }
}

/// Every request `server` received was verified, signed with the real key (never the dummy one).
fn assert_all_verified(server: &AwsServer, what: &str) -> Vec<Value> {
    let log = server.log();
    assert!(!log.is_empty(), "{what}: no request arrived");
    for line in &log {
        assert_eq!(line["verified"], true, "{what}: {line:#}");
        assert_eq!(line["access_key_id"], ACCESS_KEY_ID, "{what}: {line:#}");
    }
    log
}

/// None of the real credentials' secrets is in `text`.
fn assert_no_secret(aws: &Aws, place: &str, text: &str) {
    for secret in aws.secrets() {
        assert!(
            !text.contains(secret),
            "a real secret is in {place}:\n{text}"
        );
    }
}

/// The audit lines of `n` HTTP requests, once they are written (a line comes when its response ended).
fn audited(d: &Daemon, n: usize) -> Vec<Value> {
    let requests = || -> Vec<Value> {
        d.audit_lines()
            .into_iter()
            .filter(|l| l["kind"] == "https" && l["method"].is_string())
            .collect()
    };
    wait_for(SETTLE, || Some(requests()).filter(|r| r.len() >= n));
    let requests = requests();
    assert_eq!(requests.len(), n, "{requests:#?}");
    requests
}

/// Nothing the daemon wrote (its log, its audit log) holds a real secret.
fn assert_daemon_kept_the_secrets(d: &Daemon, aws: &Aws) {
    assert_no_secret(aws, "the daemon's log", &d.logs());
    let audit = std::fs::read_to_string(&d.audit_log).unwrap_or_default();
    assert!(audit.contains("\"integration\":\"aws\""), "{audit}");
    assert_no_secret(aws, "the audit log", &audit);
}

/// The aws CLI, unmodified, with dummy credentials: `s3 mb`, a 20 MiB file up and down (`s3 cp`:
/// UNSIGNED-PAYLOAD multipart; `s3api put-object --checksum-algorithm CRC32`: one unsigned-trailer
/// upload, aws-chunked with a CRC32 trailer), keys and prefixes that need encoding (`s3 ls`, `s3api
/// list-objects-v2 --prefix`), and Bedrock's InvokeModel signed by botocore ([`INVOKE_MODEL`]: a POST with
/// a JSON body, a model id with ':'). Every request arrived
/// verified with the real key; the real secrets appear nowhere in the sandbox (its environment, the
/// daemon's files, every answer), the daemon's log or the audit log.
#[test]
fn the_aws_cli_works_unmodified_with_dummy_credentials() {
    if skip_unless_privileged_with(&["aws", "python3"]) {
        return;
    }
    with_aws(|d, aws, s3, bedrock| {
        let script = format!(
            r#"set -e
echo "--- env"; env
echo "--- self environ"; tr '\0' '\n' < /proc/self/environ
echo "--- daemon environ"; tr '\0' '\n' < /proc/{daemon_pid}/environ 2>&1 || true
echo "--- config"; cat {config} 2>&1 || true
echo "--- secret file"; cat {secret_file} 2>&1 || true
head -c 20971520 /dev/urandom > big
echo "--- mb"; aws s3 mb s3://{BUCKET}
echo "--- cp up"; aws s3 cp --no-progress big s3://{BUCKET}/big
echo "--- cp down"; aws s3 cp --no-progress s3://{BUCKET}/big big.down; cmp big big.down
echo "--- put-object, trailer"; aws s3api put-object --checksum-algorithm CRC32 --bucket {BUCKET} --key "dir with space/trailer+ü=1.bin" --body big
echo "--- cp down, trailer"; aws s3 cp --no-progress "s3://{BUCKET}/dir with space/trailer+ü=1.bin" t.down; cmp big t.down
echo "--- ls"; aws s3 ls s3://{BUCKET}/
echo "--- ls prefix"; aws s3 ls "s3://{BUCKET}/dir with space/"
echo "--- list-objects-v2"; aws s3api list-objects-v2 --bucket {BUCKET} --prefix "dir with space/trailer+ü" --query 'Contents[].Key' --output text
echo "--- invoke-model"; python3 - <<'EOF'
{INVOKE_MODEL}
EOF
echo "--- end"
"#,
            daemon_pid = d.pid(),
            config = d.config.display(),
            secret_file = aws.secret_file.display(),
        );
        let out = Script::run(d, &script);
        let all = &out.0;
        assert_no_secret(aws, "the sandbox", all);
        let section = |name| out.section(name);
        assert!(section("ls").contains("PRE dir with space/"), "{all}");
        assert!(section("ls").contains("20971520 big"), "{all}");
        assert!(
            section("ls prefix").contains("20971520 trailer+ü=1.bin"),
            "{all}"
        );
        assert_eq!(
            section("list-objects-v2").trim(),
            "dir with space/trailer+ü=1.bin"
        );
        let invoked: Value = serde_json::from_str(section("invoke-model").lines().last().unwrap())
            .unwrap_or_else(|e| panic!("invoke-model answer: {e}\n{all}"));
        assert_eq!(invoked["model"], "anthropic.claude-v2:1");
        assert_eq!(invoked["input"]["prompt"], "héllo & <bye>?");
        assert_eq!(invoked["output"], "ok");

        let s3_log = assert_all_verified(s3, "S3");
        let uploads = |content_sha256: &str| {
            s3_log
                .iter()
                .filter(|l| l["method"] == "PUT" && l["content_sha256"] == content_sha256)
                .map(|l| l["body"].as_u64().unwrap())
                .sum::<u64>()
        };
        assert_eq!(
            uploads("UNSIGNED-PAYLOAD"),
            20 << 20,
            "Debian's CLI uploads with UNSIGNED-PAYLOAD"
        );
        assert_eq!(
            uploads("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            20 << 20,
            "put-object --checksum-algorithm uploads with a trailing checksum"
        );
        assert!(
            s3_log.iter().any(|l| l["method"] == "GET"
                && l["query"].as_str().unwrap().contains("dir%20with%20space")),
            "a listing with a prefix that needs encoding: {s3_log:#?}"
        );
        let bedrock_log = assert_all_verified(bedrock, "Bedrock");
        assert_eq!(bedrock_log.len(), 1, "{bedrock_log:#?}");
        assert_eq!(bedrock_log[0]["method"], "POST");
        assert_eq!(bedrock_log[0]["service"], "bedrock");

        let requests = audited(d, s3_log.len() + bedrock_log.len());
        assert!(
            requests.iter().all(|l| l["verdict"] == "injected"),
            "{requests:#?}"
        );
    });
}

/// What cannot be signed is answered by the daemon with what to do, and reaches no server: a presigned
/// URL (`aws s3 presign`, SigV4 in the query) and a chunk-signed upload (400), a body over 16 MiB
/// without its hash (413, before it is read); a Host that is not the connection's name gets 421. The
/// large body goes over HTTP/1.1: over HTTP/2 the daemon's answer ends the stream (RST_STREAM
/// NO_ERROR, RFC 9113 8.1) while curl 7.88 still sends, and curl reports that as an error of its own.
#[test]
fn what_cannot_be_signed_is_refused_and_reaches_no_server() {
    if skip_unless_privileged_with(&["aws"]) {
        return;
    }
    with_aws(|d, _, s3, bedrock| {
        let chunk_signed = format!(
            r#"
import http.client, ssl
connection = http.client.HTTPSConnection("{S3_HOST}", context=ssl.create_default_context())
body = b"5;chunk-signature=00\r\nhello\r\n0;chunk-signature=00\r\n\r\n"
connection.request("PUT", "/{BUCKET}/chunked", body=body, headers={{
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "x-amz-decoded-content-length": "5",
    "content-encoding": "aws-chunked",
    "authorization": "AWS4-HMAC-SHA256 Credential=sandbox/20260101/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=00",
}})
answer = connection.getresponse()
print(answer.status, answer.read().decode())
"#
        );
        let script = format!(
            r#"set -e
w='\n%{{http_code}}\n'
echo "--- presigned"; curl -sS -w "$w" "$(aws s3 presign s3://{BUCKET}/big)"
echo "--- chunk-signed"; python3 -c '{chunk_signed}'
head -c 17825792 /dev/zero > large
echo "--- large"; curl -sS --http1.1 -w "$w" -H 'content-type: application/json' --data-binary @large https://{BEDROCK_HOST}/model/m/invoke
echo "--- other host"; curl -sS -w "$w" -H 'Host: sts.{REGION}.amazonaws.com' https://{S3_HOST}/
echo "--- end"
"#
        );
        let out = Script::run(d, &script);
        let all = &out.0;
        let section = |name| out.section(name);
        let presigned = section("presigned");
        assert!(presigned.trim_end().ends_with("400"), "{all}");
        assert!(
            presigned.contains("presigned URL")
                && presigned.contains("send the request with no signature in its URL"),
            "{all}"
        );
        let chunked = section("chunk-signed");
        assert!(chunked.starts_with("400 "), "{all}");
        assert!(
            chunked.contains("chunk-signed upload")
                && chunked.contains("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            "{all}"
        );
        let large = section("large");
        assert!(large.trim_end().ends_with("413"), "{all}");
        assert!(large.contains("x-amz-content-sha256"), "{all}");
        let other = section("other host");
        assert!(other.trim_end().ends_with("421"), "{all}");
        assert!(s3.log().is_empty(), "{:#?}", s3.log());
        assert!(bedrock.log().is_empty(), "{:#?}", bedrock.log());
        let requests = audited(d, 4);
        let statuses: Vec<&Value> = requests.iter().map(|l| &l["status"]).collect();
        assert_eq!(statuses, [400, 400, 413, 421], "{requests:#?}");
        assert!(
            requests.iter().all(|l| l["verdict"] == "denied"),
            "{requests:#?}"
        );
    });
}

/// HTTP/2 clients are signed too: curl --http2 with a JSON body to the Bedrock endpoint (which offers h2:
/// without a signing integration the daemon would relay the connection frame by frame), unsigned and
/// signed with dummy keys (`--aws-sigv4`), and a PUT to S3 (HTTP/1.1 only) without x-amz-content-sha256:
/// the daemon hashes the body. The upstream saw HTTP/2 from the daemon where it offered it.
#[test]
fn http2_clients_are_signed_too() {
    if skip_unless_privileged() {
        return;
    }
    with_aws(|d, _, s3, bedrock| {
        let script = format!(
            r#"set -e
w='\n%{{http_code}} %{{http_version}}\n'
echo "--- unsigned"; curl -sS --http2 -w "$w" -H 'content-type: application/json' --data-binary '{{"prompt": "h2"}}' https://{BEDROCK_HOST}/model/m/invoke
echo "--- dummy"; curl -sS --http2 -w "$w" --aws-sigv4 aws:amz:{REGION}:bedrock --user sandbox:sandbox -H 'content-type: application/json' --data-binary '{{"prompt": "h2 signed"}}' https://{BEDROCK_HOST}/model/m/invoke
echo "--- s3 put"; head -c 100000 /dev/urandom > small; curl -sS --http2 -w "$w" -T small https://{S3_HOST}/{BUCKET}/h2-object
echo "--- s3 get"; curl -sS --http2 -o small.down -w "$w" https://{S3_HOST}/{BUCKET}/h2-object; cmp small small.down
echo "--- end"
"#
        );
        let out = Script::run(d, &script);
        let all = &out.0;
        for (name, prompt) in [("unsigned", "h2"), ("dummy", "h2 signed")] {
            let section = out.section(name);
            assert!(
                section.contains(&format!("\"prompt\": \"{prompt}\"")),
                "{all}"
            );
            assert!(section.ends_with("}\n200 2"), "{all}");
        }
        // Neither prints a body: an empty one, one written to a file.
        assert_eq!(out.section("s3 put"), "\n200 2", "{all}");
        assert_eq!(out.section("s3 get"), "\n200 2", "{all}");
        let bedrock_log = assert_all_verified(bedrock, "Bedrock");
        assert_eq!(bedrock_log.len(), 2, "{bedrock_log:#?}");
        assert!(
            bedrock_log.iter().all(|l| l["protocol"] == "HTTP/2"),
            "{bedrock_log:#?}"
        );
        let s3_log = assert_all_verified(s3, "S3");
        let put = &s3_log[0];
        assert_eq!(put["method"], "PUT");
        assert_eq!(put["body"], 100_000);
        let hash = put["content_sha256"].as_str().unwrap();
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{put:#}"
        );
    });
}
