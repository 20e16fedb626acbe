//! End-to-end tests of upstream connection churn (DESIGN step 4: "a request the upstream did not process is
//! sent again on another connection, so a client never sees such churn; nothing that may have been
//! processed is replayed"). Upstreams close connections as a matter of course: nginx sends GOAWAY after
//! `keepalive_requests`, on every reload and restart; servers refuse streams and time out idle
//! connections. Against nginx under load from sandboxed wrk and curl no request may fail; against test
//! servers that go away, refuse or close at chosen moments, exactly the requests the upstream did not
//! process arrive again, once, and a request that may have been processed is never sent twice.
//! Root only; all traffic stays inside the test's namespaces.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::upstream_processes::*;
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// How long each load runs.
const LOAD: Duration = Duration::from_secs(20);

/// Requests and failures (not 2xx, or no answer) one client reported.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    failed: u64,
}

/// The clients of [`load`]: HTTP/1.1 clients (wrk) of an upstream that speaks h2 (their requests share the
/// daemon's pooled HTTP/2 connections) and of one that speaks only HTTP/1.1 (pooled HTTP/1.1 connections),
/// and an HTTP/2 client (node, through `tests/clients/h2_retry.js`: 16 streams at a time on a connection)
/// whose connections the daemon relays, each over an upstream connection of its own: 64 client
/// connections at a time in all, each client in a sandbox of its own.
struct Load {
    wrk_h2: Running,
    wrk_h1: Running,
    node_h2: Running,
}

#[derive(Debug)]
struct LoadResult {
    wrk_h2: Tally,
    wrk_h1: Tally,
    node_h2: Tally,
}

fn load(d: &Daemon, nginx: &Nginx) -> Load {
    let user = test_user();
    let seconds = LOAD.as_secs().to_string();
    let wrk = |name: &str, connections: &str| {
        d.exec(&user)
            .args([
                "wrk",
                "-t1",
                "-c",
                connections,
                "-d",
                &format!("{seconds}s"),
                // The default (2 s) would count a request waiting out an upstream's restart as failed.
                "--timeout",
                "10s",
                &format!("https://{name}/small"),
            ])
            .timeout(LOAD + Duration::from_secs(30))
            .spawn()
    };
    // The HTTP/2 client sends again itself what a GOAWAY or REFUSED_STREAM says was not processed (RFC
    // 9113 §8.7), on a new connection, as it would talking to nginx directly.
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/h2_retry.js");
    Load {
        wrk_h2: wrk(&nginx.name, "32"),
        wrk_h1: wrk(&nginx.h1_name, "16"),
        node_h2: d
            .exec(&user)
            .args([
                "node".to_string(),
                client.display().to_string(),
                "--seconds".into(),
                seconds.clone(),
                "--parallel".into(),
                "16".into(),
                format!("https://{}/small", nginx.name),
            ])
            .timeout(LOAD + Duration::from_secs(30))
            .spawn(),
    }
}

/// wrk's summary: "N requests in ...", "Non-2xx or 3xx responses: K", "Socket errors: connect A, read B,
/// write C, timeout D".
fn wrk_tally(o: &std::process::Output) -> Tally {
    let out = stdout(o);
    let mut tally = Tally::default();
    for line in out.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            tally.requests = n.parse().unwrap_or_else(|_| panic!("wrk: {out}"));
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            tally.failed += n.trim().parse::<u64>().unwrap();
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            tally.failed += errors
                .split(',')
                .filter_map(|e| e.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    tally
}

impl Load {
    fn finish(self) -> LoadResult {
        let [wrk_h2, wrk_h1] = [self.wrk_h2, self.wrk_h1].map(|wrk| {
            let o = wrk.finish();
            assert_code(&o, 0);
            wrk_tally(&o)
        });
        let o = self.node_h2.finish();
        assert_code(&o, 0);
        let out = stdout(&o);
        let words: Vec<&str> = out.split_whitespace().collect();
        let node_h2 = match words[..] {
            ["requests", requests, "failed", failed, "retried", _] => Tally {
                requests: requests.parse().unwrap(),
                failed: failed.parse().unwrap(),
            },
            _ => panic!("h2_retry.js: {}", describe(&o)),
        };
        LoadResult {
            wrk_h2,
            wrk_h1,
            node_h2,
        }
    }
}

/// Asserts that every client had its requests answered 2xx, and that the daemon answered none of them
/// with an error of its own.
fn assert_nothing_lost(d: &Daemon, result: &LoadResult) {
    eprintln!("{result:?}");
    let audit = d.audit_lines();
    let errors: Vec<&Value> = audit
        .iter()
        .filter(|l| l["kind"] == "https" && l["status"].as_u64() != Some(200))
        .filter(|l| !told_to_send_again(l))
        .take(5)
        .collect();
    for (client, tally) in [
        ("wrk, upstream h2", result.wrk_h2),
        ("wrk, upstream http/1.1", result.wrk_h1),
        ("node, HTTP/2", result.node_h2),
    ] {
        assert!(tally.requests > 0, "{client}: no requests");
        assert_eq!(
            tally.failed, 0,
            "{client}: {result:?}\nrequests that failed: {errors:#?}"
        );
    }
    assert!(errors.is_empty(), "requests that failed: {errors:#?}");
}

/// An audit line of the HTTP/2 relay for a stream the upstream did not process (GOAWAY, REFUSED_STREAM):
/// the client was told so, and sends it again itself.
fn told_to_send_again(line: &Value) -> bool {
    line["error"]
        .as_str()
        .is_some_and(|e| e.contains("GOAWAY") || e.contains("REFUSED_STREAM"))
}

/// How many audit lines of requests say the daemon sent them again.
fn retried(d: &Daemon) -> u64 {
    d.audit_lines()
        .iter()
        .filter_map(|l| l["retries"].as_u64())
        .sum()
}

/// nginx as it comes (GOAWAY after 1000 requests on a connection, HTTP/1.1 keep-alive 75 s), then with
/// `keepalive_requests 100` (GOAWAY, and HTTP/1.1 `Connection: close`, every 100 requests): under 64
/// connections of kept-alive load no request fails, and the daemon's audit shows it sent requests again.
#[test]
fn nginx_rotating_its_connections_loses_no_request() {
    if skip_unless_privileged_with(&["nginx", "wrk", "node", "h2load"]) {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let d = churn.configure(net.daemon()).start();
    for (n, http) in [(11, ""), (13, "keepalive_requests 100;")] {
        let nginx = Nginx::start(&net, &churn, n, http);
        let before = retried(&d);
        let result = load(&d, &nginx).finish();
        assert_nothing_lost(&d, &result);
        assert!(
            retried(&d) > before,
            "{http:?}: nginx rotated no connection under the load: the test proves nothing"
        );
    }
    relayed_h2load_sees_goaway_as_http2_defines(&net, &churn, &d);
    d.finish();
}

/// h2load (nghttp2) neither reconnects after a GOAWAY nor sends again the streams it says were not
/// processed: it counts those, and the requests it had yet to send, as failed. Through the relay it sees
/// what it sees talking to nginx directly: each of its connections answered `keepalive_requests` times,
/// and no answer but 2xx.
fn relayed_h2load_sees_goaway_as_http2_defines(net: &TestNet, churn: &Churn, d: &Daemon) {
    let nginx = Nginx::start(net, churn, 15, "");
    let url = format!("https://{}/h2load", nginx.name);
    let args = ["h2load", "-c4", "-m8", "-n8000", url.as_str()];
    let mut direct = std::process::Command::new(tool("ip"));
    direct.args(["netns", "exec", &net.h]).args(args);
    let direct = h2load_counts(&run_command(direct, Duration::from_secs(120)));
    let relayed = h2load_counts(
        &d.exec(&test_user())
            .args(args)
            .timeout(Duration::from_secs(120))
            .run(),
    );
    eprintln!("h2load (succeeded, not 2xx): directly {direct:?}, relayed {relayed:?}");
    assert_eq!(
        direct,
        (4000, 0),
        "4 connections x 1000 requests, nginx's default"
    );
    assert_eq!(relayed, direct);
}

/// (requests succeeded, answers not 2xx) in h2load's summary.
fn h2load_counts(o: &std::process::Output) -> (u64, u64) {
    assert_code(o, 0);
    let out = stdout(o);
    let count = |line: &str, word: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("h2load: no {line:?} line: {out}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .unwrap_or_else(|| panic!("h2load: no {word:?} in {line:?}"));
        words[at - 1].parse().unwrap()
    };
    let not_2xx = ["3xx", "4xx", "5xx"]
        .iter()
        .map(|class| count("status codes:", class))
        .sum();
    (count("requests:", "succeeded"), not_2xx)
}

/// nginx reloaded every 2 s under the load: each reload sends GOAWAY on every HTTP/2 connection and
/// closes the HTTP/1.1 ones (idle ones at once, busy ones after their response). No request fails.
#[test]
fn nginx_reloaded_every_two_seconds_loses_no_request() {
    if skip_unless_privileged_with(&["nginx", "wrk", "node"]) {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let d = churn.configure(net.daemon()).start();
    let nginx = Nginx::start(&net, &churn, 11, "");
    let running = load(&d, &nginx);
    let started = Instant::now();
    let mut reloads = 0;
    while started.elapsed() + Duration::from_secs(3) < LOAD {
        thread::sleep(Duration::from_secs(2));
        nginx.reload();
        reloads += 1;
    }
    let result = running.finish();
    eprintln!("{reloads} reloads");
    assert_nothing_lost(&d, &result);
    d.finish();
}

/// nginx stopped at once (SIGTERM: connections cut, requests in flight lost to it) and started again, then
/// stopped gracefully (SIGQUIT) and started again, under the load: the requests (all GETs) that met a closed
/// connection go again, and those that met a refused one wait for it to come back. No request fails.
#[test]
fn nginx_restarted_under_load_loses_no_idempotent_request() {
    if skip_unless_privileged_with(&["nginx", "wrk", "node"]) {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let d = churn.configure(net.daemon()).start();
    let mut nginx = Nginx::start(&net, &churn, 11, "");
    let running = load(&d, &nginx);
    for signal in [Signal::SIGTERM, Signal::SIGQUIT] {
        thread::sleep(Duration::from_secs(6));
        nginx.stop(signal);
        thread::sleep(Duration::from_millis(300));
        nginx.start_again();
    }
    let result = running.finish();
    assert_nothing_lost(&d, &result);
    d.finish();
}

/// An HTTP/1.1 upstream that closes idle connections after 1 s (nginx `keepalive_timeout 1s`): a request
/// after that never takes the closed connection, whenever it comes.
#[test]
fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    if skip_unless_privileged_with(&["nginx"]) {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let d = churn.configure(net.daemon()).start();
    let nginx = Nginx::start(&net, &churn, 11, "keepalive_timeout 1s;");
    // Pauses around the timeout: a connection goes idle, the next request comes as it is closed, or after.
    let script = format!(
        "for pause in 0.9 1.0 1.05 1.1 1.2 1.5; do \
         curl -sS --http1.1 -o /dev/null -w '%{{http_code}}\\n' https://{name}/small || exit 1; \
         sleep $pause; done; curl -sS --http1.1 -o /dev/null -w '%{{http_code}}\\n' https://{name}/small",
        name = nginx.h1_name
    );
    let o = d
        .exec(&test_user())
        .args(["sh", "-c", &script])
        .timeout(Duration::from_secs(60))
        .run();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["200"; 7],
        "{}",
        describe(&o)
    );
    d.finish();
}

/// The server's log entries for request `id`.
fn entries<'a>(log: &'a [Value], id: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["id"] == id).collect()
}

/// For requests `ids` held on one connection and then cut by GOAWAY: each was processed exactly once;
/// those the GOAWAY said were not processed (on streams above its last one) arrived once more, on another
/// connection; the others never again. Returns how many went again.
fn assert_goaway_replayed_exactly_the_unprocessed(log: &[Value], ids: &[String]) -> usize {
    let mut again = 0;
    let mut processed_streams = Vec::new();
    let mut unprocessed_streams = Vec::new();
    for id in ids {
        let seen = entries(log, id);
        let answered: Vec<_> = seen.iter().filter(|e| e["answered"] == true).collect();
        assert_eq!(answered.len(), 1, "{id} processed once: {seen:#?}");
        match seen.iter().find(|e| e["answered"] == false) {
            None => {
                assert_eq!(seen.len(), 1, "{id}: {seen:#?}");
                processed_streams.push(answered[0]["stream"].as_u64().unwrap());
            }
            Some(unprocessed) => {
                assert_eq!(seen.len(), 2, "{id} went again once: {seen:#?}");
                assert_ne!(
                    unprocessed["conn"], answered[0]["conn"],
                    "{id} went again on another connection: {seen:#?}"
                );
                unprocessed_streams.push(unprocessed["stream"].as_u64().unwrap());
                again += 1;
            }
        }
    }
    let last_processed = processed_streams.iter().max();
    assert!(
        unprocessed_streams.iter().all(|s| Some(s) > last_processed),
        "only streams above the GOAWAY's last went again: {log:#?}"
    );
    again
}

/// Asserts that curl's output has the answer to each of `ids`, and for each a `-w` line `status` (curl
/// `-Z` writes bodies as they come, and those lines as transfers end).
fn assert_answered<'a>(o: &std::process::Output, ids: impl Iterator<Item = &'a str>, status: &str) {
    let out = stdout(o);
    let lines: Vec<&str> = out.lines().collect();
    let mut n = 0;
    for id in ids {
        assert!(
            lines.contains(&format!("ok {id}").as_str()),
            "{id}: {}",
            describe(o)
        );
        n += 1;
    }
    let statuses: Vec<&&str> = lines.iter().filter(|l| l.starts_with(' ')).collect();
    assert_eq!(statuses, vec![&status; n], "{}", describe(o));
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// Test upstream (python3-h2) for HTTP/1.1 clients, whose requests share the daemon's pooled HTTP/2
/// connection: six requests held, then GOAWAY saying the three lowest streams were processed: the other
/// three arrive again on a new connection, once each, and the first three never again; a stream refused
/// (REFUSED_STREAM) arrives again and is answered. Every client gets 200, and the audit counts the retries.
#[test]
fn requests_above_a_goaway_or_refused_go_again_exactly_once() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let server = PythonServer::h2_churn(&net, &churn, 21, 6, 3);
    let d = churn.configure(net.daemon()).start();
    let held = ids("a", 6);
    let url = |path: &str, id: &str| format!("'https://{}{path}?id={id}'", server.name);
    let held_urls: Vec<String> = held.iter().map(|id| url("/hold", id)).collect();
    // The first request opens the upstream connection the six held ones (six client connections) share.
    let script = format!(
        "set -e; curl -sS --http1.1 -w ' %{{http_code}}\\n' {first}; \
         curl -sS --http1.1 -Z --parallel-max 6 -w ' %{{http_code}}\\n' {held}; \
         curl -sS --http1.1 -w ' %{{http_code}}\\n' {refused}",
        first = url("/now", "first"),
        held = held_urls.join(" "),
        refused = url("/refuse-once", "r1"),
    );
    let o = d
        .exec(&test_user())
        .args(["sh", "-c", &script])
        .timeout(Duration::from_secs(30))
        .run();
    assert_code(&o, 0);
    assert_answered(
        &o,
        held.iter().map(String::as_str).chain(["first", "r1"]),
        " 200",
    );
    let log = server.log();
    assert_eq!(
        assert_goaway_replayed_exactly_the_unprocessed(&log, &held),
        3,
        "{log:#?}"
    );
    let refused = entries(&log, "r1");
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert_eq!(refused[0]["answered"], false);
    assert_eq!(refused[1]["answered"], true);

    let audit = wait_for(SETTLE, || {
        let lines = d.audit_lines();
        (lines.iter().filter(|l| l["kind"] == "https").count() >= 8).then_some(lines)
    })
    .unwrap_or_else(|| panic!("one audit line a request: {:#?}", d.audit_lines()));
    let requests: Vec<&Value> = audit.iter().filter(|l| l["kind"] == "https").collect();
    assert_eq!(requests.len(), 8, "one line a request: {requests:#?}");
    assert!(requests.iter().all(|l| l["status"] == 200), "{requests:#?}");
    let retries = |path: &str| -> Vec<u64> {
        let mut r: Vec<u64> = requests
            .iter()
            .filter(|l| l["path"] == path)
            .map(|l| l["retries"].as_u64().unwrap_or(0))
            .collect();
        r.sort();
        r
    };
    assert_eq!(retries("/hold"), [0, 0, 0, 1, 1, 1]);
    assert_eq!(retries("/refuse-once"), [1]);
    d.finish();
}

/// The same for HTTP/2 clients, whose connections the daemon relays, each over an upstream connection of
/// its own: the relay passes the upstream's GOAWAY and REFUSED_STREAM on as they came, and the client sends
/// again itself, on a new connection, what they say was not processed (RFC 9113 §8.7). A client that does
/// so and counts its attempts (node, through `tests/clients/h2_retry.js`) sees the three lowest streams
/// answered at once and sends exactly the other three again; curl sends a refused stream again.
#[test]
fn an_http2_client_is_told_what_the_upstream_did_not_process() {
    if skip_unless_privileged_with(&["node"]) {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let server = PythonServer::h2_churn(&net, &churn, 21, 6, 3);
    let d = churn.configure(net.daemon()).start();
    let user = test_user();
    let held = ids("n", 6);
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/h2_retry.js");
    let mut argv = vec!["node".to_string(), client.display().to_string()];
    argv.extend(
        held.iter()
            .map(|id| format!("https://{}/hold?id={id}", server.name)),
    );
    let o = d
        .exec(&user)
        .args(&argv)
        .timeout(Duration::from_secs(30))
        .run();
    assert_code(&o, 0);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    let expected: Vec<String> = held
        .iter()
        .enumerate()
        .map(|(i, id)| format!("200 {} ok {id}", if i < 3 { 1 } else { 2 }))
        .collect();
    assert_eq!(lines, expected, "status, attempts, body: {}", describe(&o));
    let log = server.log();
    assert_eq!(
        assert_goaway_replayed_exactly_the_unprocessed(&log, &held),
        3,
        "{log:#?}"
    );

    let o = d
        .exec(&user)
        .args([
            "curl",
            "-sS",
            "--http2",
            "-w",
            " %{http_code} %{http_version}\\n",
            &format!("https://{}/refuse-once?id=r2", server.name),
        ])
        .run();
    assert_code(&o, 0);
    assert_answered(&o, ["r2"].into_iter(), " 200 2");
    assert_eq!(entries(&server.log(), "r2").len(), 2, "{:#?}", server.log());
    // The relay's audit: the three streams the upstream went away before taking, and the refused one,
    // each told to the client.
    let told = wait_for(SETTLE, || {
        let n = d
            .audit_lines()
            .iter()
            .filter(|l| told_to_send_again(l))
            .count();
        (n == 4).then_some(n)
    });
    assert_eq!(told, Some(4), "{:#?}", d.audit_lines());
    d.finish();
}

/// Test upstream (HTTP/1.1 only) that closes each kept-alive connection, unanswered, as its second request
/// arrives: what a keep-alive timeout racing the next request does. A GET goes again (idempotent: RFC 9110
/// §9.2.2), over HTTP/1.1 and from an HTTP/2 client alike; so does a PUT whose small body was kept. A POST
/// does not (it may have been processed), nor a PUT whose body (over 64 KiB) was streamed and not kept:
/// each gets 502 saying why, and an audit line, and reached the upstream once.
#[test]
fn a_connection_closed_before_its_answer_replays_only_what_may_go_twice() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let churn = Churn::new();
    let server = PythonServer::h1_churn(&net, &churn, 22);
    let d = churn.configure(net.daemon()).start();
    let user = test_user();
    let small = d.work.join("small.bin");
    let large = d.work.join("large.bin");
    std::fs::write(&small, vec![b's'; 10 * 1024]).unwrap();
    std::fs::write(&large, vec![b'l'; 100 * 1024]).unwrap();
    let request = |id: &str, args: &[&str]| -> (u16, String) {
        let mut argv: Vec<String> = ["curl", "-sS", "--max-time", "20", "-w", "\\n%{http_code}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.push(format!("https://{}/x?id={id}", server.name));
        let o = d.exec(&user).args(&argv).run();
        assert_code(&o, 0);
        let out = stdout(&o);
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), body.trim_end().to_string())
    };
    // Each case: a first request leaves a pooled connection that has served one request (an HTTP/2
    // client's first, the pool's note that the upstream speaks only HTTP/1.1), and the case's request
    // meets it closing.
    let h1 = ["--http1.1"];
    let put = |file: &'static str| ["--http1.1", "-H", "Expect:", "-T", file];
    let cases: [(&str, &[&str], Vec<&str>, bool); 5] = [
        ("get", &h1, vec!["--http1.1"], true),
        ("h2get", &["--http2"], vec!["--http2"], true),
        ("put-small", &h1, put("small.bin").to_vec(), true),
        ("post", &h1, vec!["--http1.1", "-d", "x=1"], false),
        ("put-large", &h1, put("large.bin").to_vec(), false),
    ];
    for (id, opener, args, replayed) in &cases {
        assert_eq!(request(&format!("{id}-opener"), opener).0, 200);
        let (status, body) = request(id, args);
        let seen = entries(&server.log(), id).len();
        if *replayed {
            assert_eq!((status, body.as_str()), (200, format!("ok {id}").as_str()));
            assert_eq!(seen, 2, "{id}: {:#?}", server.log());
        } else {
            assert_eq!(status, 502, "{id}: {body}");
            assert!(
                body.contains("the upstream closed the connection before answering")
                    && body.contains("not sent again"),
                "{id}: {body}"
            );
            assert_eq!(
                seen,
                1,
                "{id} reached the upstream once: {:#?}",
                server.log()
            );
        }
    }
    let log = server.log();
    let bodies: Vec<u64> = entries(&log, "put-small")
        .iter()
        .map(|e| e["body"].as_u64().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [10240, 10240],
        "the kept body went whole both times"
    );
    let post = request_error(&d, "POST");
    assert!(post.contains("POST is not idempotent"), "{post}");
    let put = request_error(&d, "PUT");
    assert!(put.contains("over 64 KiB"), "{put}");
    let mut retried: Vec<(String, u64)> = d
        .audit_lines()
        .iter()
        .filter(|l| l["kind"] == "https" && l["status"] == 200 && l["path"] == "/x")
        .filter_map(|l| Some((l["method"].as_str()?.to_string(), l["retries"].as_u64()?)))
        .collect();
    retried.sort();
    // The openers after the first met a closing connection too, and went again.
    assert_eq!(
        retried.iter().filter(|(method, _)| method == "PUT").count(),
        1,
        "{retried:?}"
    );
    assert!(retried.iter().all(|(_, n)| *n == 1), "{retried:?}");
    d.finish();
}

/// The error of the one audited request with `method` answered 502.
fn request_error(d: &Daemon, method: &str) -> String {
    let lines = wait_for(SETTLE, || {
        let lines: Vec<Value> = d
            .audit_lines()
            .into_iter()
            .filter(|l| l["method"] == method && l["status"] == 502)
            .collect();
        (!lines.is_empty()).then_some(lines)
    })
    .unwrap_or_default();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["verdict"], "error");
    lines[0]["error"].as_str().unwrap().to_string()
}
