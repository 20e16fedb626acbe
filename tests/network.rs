//! End-to-end tests of a sandbox's network: TCP (v4/v6) and DNS go through the daemon to the test
//! upstream; the host's own services, link-local and metadata addresses, UDP other than DNS, and the
//! daemon's socket and config stay out of reach; egress "deny"; the audit log. Root only. All traffic
//! stays inside the test's namespaces (see `common`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn curl(url: &str) -> Vec<String> {
    [
        "curl",
        "-sS",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Sends a line to TCP port 443 of each host and prints what came back.
const TCP_ECHO: &str = r#"
import socket, sys
for host in sys.argv[1:]:
    msg = ("echo-443 " + host).encode()
    s = socket.create_connection((host, 443), timeout=5)
    s.sendall(msg)
    data = b""
    while len(data) < len(msg):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(data.decode())
"#;

#[test]
fn tcp_and_dns_reach_the_upstream_through_the_daemon() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();

    for (url, host_header) in [
        (format!("http://{}/", net.u4), net.u4.to_string()),
        (format!("http://{DNS_NAME}/"), DNS_NAME.to_string()),
        (format!("http://[{}]/", net.u6), format!("[{}]", net.u6)),
    ] {
        let o = d.exec(&user).args(curl(&url)).run();
        assert_code(&o, 0);
        let body = stdout(&o);
        assert!(body.contains(UPSTREAM_MARKER), "{url}: {body}");
        assert!(
            body.contains(&format!("Host: {host_header}")),
            "{url}: {body}"
        );
    }
    // The daemon made the upstream connections itself (no forwarding): they come from H's addresses.
    for r in net.http_requests() {
        let from = r.peer.ip();
        assert!(
            from == IpAddr::from(net.h4) || from == IpAddr::from(net.h6),
            "request arrived from {from}, not from H: {r:?}"
        );
    }

    let o = d
        .exec(&user)
        .args(["python3", "-c", TCP_ECHO])
        .args([net.u4.to_string(), net.u6.to_string()])
        .run();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        format!("echo-443 {}\necho-443 {}\n", net.u4, net.u6)
    );

    let o = d.exec(&user).args(["getent", "hosts", DNS_NAME]).run();
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains(&net.u4.to_string()) || out.contains(&net.u6.to_string()),
        "{out}"
    );
    let o = d
        .exec(&user)
        .args(["getent", "hosts", "no-such-name.test"])
        .run();
    assert_code(&o, 2);
    assert!(
        net.seen
            .dns
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.starts_with(DNS_NAME)),
        "the test resolver saw no query"
    );

    d.finish();
}

/// Prints the sandbox's default gateways as a JSON line, then reads a JSON list of [host, port] from
/// stdin, tries each (in parallel) and prints a JSON map "host port" -> "reached ..." / "failed: ...".
const PROBE: &str = r#"
import json, socket, struct, sys, threading
def gw4():
    with open("/proc/net/route") as f:
        for line in f.read().splitlines()[1:]:
            p = line.split()
            if p[1] == "00000000" and p[7] == "00000000":
                return socket.inet_ntoa(struct.pack("<L", int(p[2], 16)))
def gw6():
    with open("/proc/net/ipv6_route") as f:
        for line in f:
            p = line.split()
            if p[0] == "0" * 32 and p[1] == "00" and p[4] != "0" * 32:
                return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(p[4]))
def probe(host, port):
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        s = socket.socket(info[0], socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(info[4])
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = s.recv(200)
        return ("reached " + repr(data)) if data else "failed: closed without data"
    except Exception as e:
        return "failed: %s %s" % (type(e).__name__, e)
print(json.dumps({"gw4": gw4(), "gw6": gw6()}), flush=True)
targets = json.loads(sys.stdin.readline())
results = {}
def run(host, port):
    results["%s %d" % (host, port)] = probe(host, port)
threads = [threading.Thread(target=run, args=(h, p)) for h, p in targets]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"#;

#[test]
fn host_link_local_and_metadata_addresses_are_unreachable() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let mut r = d
        .exec(&test_user())
        .stdin_piped()
        .args(["python3", "-c", PROBE])
        .spawn();
    let gws: Value = serde_json::from_str(&r.wait_for_line("gw4")).unwrap();
    let (gw4, gw6) = (
        gws["gw4"]
            .as_str()
            .expect("IPv4 default route in the sandbox"),
        gws["gw6"]
            .as_str()
            .expect("IPv6 default route in the sandbox"),
    );

    // The host side of the sandbox's veth, seen from H: it carries the gateway and a link-local address.
    let links = ip_json(&net.h, &["addr", "show"]);
    let sbx: Vec<&Value> = links
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("sbx")))
        .collect();
    assert_eq!(sbx.len(), 1, "one sandbox, one sbx link: {links:?}");
    let addrs = sbx[0]["addr_info"].as_array().unwrap();
    let has = |a: &str| addrs.iter().any(|i| i["local"] == a);
    assert!(
        has(gw4) && has(gw6),
        "gateways {gw4} {gw6} not on {:?}",
        sbx[0]
    );
    let link_local = addrs
        .iter()
        .find(|i| i["family"] == "inet6" && i["scope"] == "link")
        .and_then(|i| i["local"].as_str())
        .expect("link-local address on the sbx link");

    let u4 = net.u4.to_string();
    let u6 = net.u6.to_string();
    let reachable = [(u4.as_str(), 80), (u6.as_str(), 80)];
    let h4 = net.h4.to_string();
    let h6 = net.h6.to_string();
    let ll = format!("{link_local}%eth0");
    let metadata = net.metadata4.to_string();
    let unreachable = [
        (gw4, 8080),
        (gw6, 8080),
        (h4.as_str(), 8080),
        (h6.as_str(), 8080),
        (metadata.as_str(), 80),
        ("fe80::1%eth0", 8080),
        (ll.as_str(), 8080),
    ];
    let targets: Vec<(&str, u16)> = reachable.iter().chain(&unreachable).copied().collect();
    r.write_stdin(format!("{}\n", serde_json::to_string(&targets).unwrap()).as_bytes());
    let o = r.finish();
    assert_code(&o, 0);
    let results: BTreeMap<String, String> =
        serde_json::from_str(stdout(&o).lines().last().expect("probe results")).unwrap();
    eprintln!("probe results: {results:#?}");
    for (host, port) in reachable {
        let res = &results[&format!("{host} {port}")];
        assert!(res.starts_with("reached"), "{host} {port}: {res} (control)");
    }
    for (host, port) in unreachable {
        let res = &results[&format!("{host} {port}")];
        assert!(
            res.starts_with("failed"),
            "{host} {port} must be unreachable: {res}"
        );
    }
    assert_eq!(
        net.host_service_connections(),
        Vec::<SocketAddr>::new(),
        "the host's own service was reached"
    );
    assert!(
        !net.http_requests()
            .iter()
            .any(|r| r.local.ip() == IpAddr::from(net.metadata4)),
        "the metadata address was reached"
    );
    d.finish();
}

/// UDP to port 9999 (expects no echo) and to port 443 (expects ECONNREFUSED) of each host.
const UDP_PROBE: &str = r#"
import json, socket, sys
tag = sys.argv[1].encode()
res = {}
for host in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(tag, (host, 9999))
    try:
        s.recvfrom(100)
        res["echo " + host] = "echoed"
    except socket.timeout:
        res["echo " + host] = "no-echo"
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, 443))
    try:
        s.send(b"quic?")
        s.recv(100)
        r = "answered"
    except ConnectionRefusedError:
        r = "refused"
    except socket.timeout:
        r = "timeout"
    except OSError as e:
        r = "error %s" % e
    res["quic " + host] = r
print(json.dumps(res))
"#;

#[test]
fn udp_other_than_dns_is_dropped_and_quic_refused() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let tag = format!("from-sandbox-{}", net.suffix);
    let (u4, u6) = (net.u4.to_string(), net.u6.to_string());
    let o = d
        .exec(&user)
        .args(["python3", "-c", UDP_PROBE, &tag, &u4, &u6])
        .run();
    assert_code(&o, 0);
    let res: BTreeMap<String, String> = serde_json::from_str(stdout(&o).trim()).unwrap();
    for host in [&u4, &u6] {
        assert_eq!(
            res[&format!("echo {host}")],
            "no-echo",
            "UDP to {host}:9999"
        );
        assert_eq!(res[&format!("quic {host}")], "refused", "UDP to {host}:443");
    }
    assert!(
        !net.seen
            .udp_echo
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p)| p == tag.as_bytes()),
        "a sandbox datagram reached the upstream"
    );
    // Control: the same echo answers H, so "no echo" above is the sandbox's doing.
    for to in [
        SocketAddr::from((net.u4, 9999)),
        SocketAddr::from((net.u6, 9999)),
    ] {
        assert_eq!(
            net.udp_roundtrip_from_h(to, b"control").as_deref(),
            Some(&b"control"[..]),
            "UDP echo from H to {to}"
        );
    }

    let o = d
        .exec(&user)
        .args([
            "sh",
            "-c",
            &format!("command -v ping >/dev/null || exit 99; ping -c 1 -W 2 {u4}"),
        ])
        .run();
    match code(&o) {
        99 => eprintln!("no ping in the sandbox: ICMP echo not tested"),
        c => assert_ne!(c, 0, "ping reached the upstream: {}", describe(&o)),
    }
    d.finish();
}

/// A daemon whose `locked` profile (egress deny) allows the test resolver's name, and nothing else.
fn allowing_dns_name(net: &TestNet) -> DaemonBuilder<'_> {
    net.daemon()
        .profile_toml("locked", &format!("allow_hosts = [\"{DNS_NAME}\"]"))
}

/// DNS over TCP (what stub resolvers use for answers too large for a datagram, and always with
/// `options use-vc`) is answered by the relay from the configured resolver, asked over TCP, under either
/// egress setting, as DNS over UDP is; and audited as DNS.
#[test]
fn dns_over_tcp_is_relayed() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = allowing_dns_name(&net).start();
    let user = test_user();

    for profile in ["default", "locked"] {
        let before = net.seen.dns_tcp.lock().unwrap().len();
        let o = d
            .exec(&user)
            .profile(profile)
            .env("RES_OPTIONS", "use-vc")
            .args(["getent", "ahostsv4", DNS_NAME])
            .run();
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains(&net.u4.to_string()),
            "{profile}: {}",
            describe(&o)
        );
        let tcp = net.seen.dns_tcp.lock().unwrap().clone();
        assert!(
            tcp[before..].iter().any(|q| q.starts_with(DNS_NAME)),
            "{profile}: the test resolver saw no query over TCP: {tcp:?}"
        );
    }
    let o = d
        .exec(&user)
        .env("RES_OPTIONS", "use-vc")
        .args(["getent", "hosts", "no-such-name.test"])
        .run();
    assert_code(&o, 2);

    let lines = wait_for(SETTLE, || {
        let dns: Vec<Value> = d
            .audit_lines()
            .into_iter()
            .filter(|l| l["kind"] == "dns" && l["host"] == DNS_NAME)
            .collect();
        (dns.len() >= 2).then_some(dns)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected DNS audit lines for {DNS_NAME}:\n{}",
            std::fs::read_to_string(&d.audit_log).unwrap_or_default()
        )
    });
    for l in &lines {
        assert_eq!(l["verdict"], "passed", "{l}");
        assert!(
            l["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(":53")),
            "{l}"
        );
    }
    d.finish();
}

/// Under egress = "deny" the relay looks up only names the profile may reach: any other is answered
/// NXDOMAIN without a query leaving the daemon (over UDP and TCP), so a name cannot carry data out to its
/// own servers; an allowed name resolves as usual. The default profile resolves both.
#[test]
fn deny_profiles_resolve_only_names_they_may_reach() {
    if skip_unless_privileged() {
        return;
    }
    const OTHER: &str = "elsewhere.test";
    let net = TestNet::new();
    net.add_dns_name(OTHER, net.u4, net.u6);
    let d = allowing_dns_name(&net).start();
    let user = test_user();
    let asked = |name: &str| {
        let udp = net.seen.dns.lock().unwrap().clone();
        let tcp = net.seen.dns_tcp.lock().unwrap().clone();
        udp.iter()
            .chain(&tcp)
            .filter(|q| q.starts_with(&format!("{name} ")))
            .count()
    };

    for options in ["", "use-vc"] {
        let o = d
            .exec(&user)
            .profile("locked")
            .env("RES_OPTIONS", options)
            .args(["getent", "ahostsv4", OTHER])
            .run();
        assert_code(&o, 2);
        let o = d
            .exec(&user)
            .profile("locked")
            .env("RES_OPTIONS", options)
            .args(["getent", "ahostsv4", DNS_NAME])
            .run();
        assert_code(&o, 0);
        assert!(stdout(&o).contains(&net.u4.to_string()), "{}", describe(&o));
    }
    assert_eq!(asked(OTHER), 0, "a query for {OTHER} left the daemon");
    assert!(asked(DNS_NAME) >= 2);

    // Names the relay cannot read cannot be checked, and resolvers read them all the same: one that ends
    // in a compression pointer (to a zero byte of the header: "secretdata.leak."), and two questions.
    let probe = r#"
import socket
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
def ask(query):
    s = socket.socket(socket.AF_INET6 if ":" in ns else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(query, (ns, 53))
    print("rcode", s.recv(512)[3] & 15)
ask(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x0asecretdata\x04leak\xc0\x04" + b"\x00\x01\x00\x01")
ask(b"\x12\x35\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x0asecretdata\x04leak\x00\x00\x01\x00\x01" * 2)
"#;
    let o = d
        .exec(&user)
        .profile("locked")
        .args(["python3", "-c", probe])
        .run();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["rcode 1", "rcode 1"],
        "FORMERR for both: {}",
        describe(&o)
    );
    let leaked = net
        .seen
        .dns_raw
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.windows(10).any(|w| w == b"secretdata"))
        .count();
    assert_eq!(
        leaked, 0,
        "a query the relay could not read left the daemon"
    );

    let o = d.exec(&user).args(["getent", "ahostsv4", OTHER]).run();
    assert_code(&o, 0);
    assert!(asked(OTHER) >= 1, "the default profile resolves any name");

    let denied = wait_for(SETTLE, || {
        let lines: Vec<Value> = d
            .audit_lines()
            .into_iter()
            .filter(|l| l["kind"] == "dns" && l["verdict"] == "denied")
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .unwrap_or_else(|| panic!("no denied DNS lines: {:?}", d.audit_lines()));
    for l in denied.iter().filter(|l| l["host"].is_string()) {
        assert_eq!(l["host"], OTHER, "{l}");
        assert_eq!(l["profile"], "locked", "{l}");
        assert!(
            l["error"].as_str().is_some_and(|e| e.contains("NXDOMAIN")),
            "{l}"
        );
    }
    d.finish();
}

#[test]
fn egress_deny_profile_blocks_tcp() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = allowing_dns_name(&net).start();
    let user = test_user();
    let url = format!("http://{}/", net.u4);

    let o = d.exec(&user).args(curl(&url)).run();
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains(UPSTREAM_MARKER),
        "control: {}",
        describe(&o)
    );
    let before = net.http_requests().len();

    let o = d.exec(&user).profile("locked").args(curl(&url)).run();
    assert_ne!(code(&o), 0, "curl under egress=deny: {}", describe(&o));
    assert!(!stdout(&o).contains(UPSTREAM_MARKER));
    let o = d
        .exec(&user)
        .profile("locked")
        .args(["python3", "-c", TCP_ECHO, &net.u4.to_string()])
        .run();
    assert_ne!(code(&o), 0, "TCP 443 under egress=deny: {}", describe(&o));
    assert!(!stdout(&o).contains("echo-443"));
    assert_eq!(
        net.http_requests().len(),
        before,
        "the upstream was reached"
    );

    // By its allowed name, the same server is reachable: the sandbox's own lookup, through the relay,
    // gave its address for that name. The TCP audit line names the host.
    let o = d
        .exec(&user)
        .profile("locked")
        .args(curl(&format!("http://{DNS_NAME}/")))
        .run();
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains(UPSTREAM_MARKER),
        "allowed name under egress=deny: {}",
        describe(&o)
    );
    let locked_tcp = || -> Vec<Value> {
        d.audit_lines()
            .into_iter()
            .filter(|l| l["kind"] == "tcp" && l["profile"] == "locked")
            .collect()
    };
    let passed = wait_for(SETTLE, || {
        let lines = locked_tcp();
        lines
            .iter()
            .any(|l| l["verdict"] == "passed" && l["host"] == DNS_NAME)
            .then_some(lines)
    });
    let lines =
        passed.unwrap_or_else(|| panic!("no passed TCP line for {DNS_NAME}: {:?}", locked_tcp()));
    assert!(
        lines.iter().any(|l| l["verdict"] == "denied"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("allow_hosts"))),
        "{lines:?}"
    );
    d.finish();
}

#[test]
fn loopback_resolver_of_the_host_is_replaced_in_the_sandbox() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().resolv_conf("nameserver 127.0.0.53\n").start();
    let o = d
        .exec(&test_user())
        .args([
            "sh",
            "-c",
            &format!("cat /etc/resolv.conf; echo ---; getent hosts {DNS_NAME}"),
        ])
        .run();
    assert_code(&o, 0);
    let out = stdout(&o);
    let (conf, answer) = out.split_once("---\n").unwrap();
    let servers: Vec<IpAddr> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|a| a.trim().parse().unwrap())
        .collect();
    assert!(!servers.is_empty(), "no nameserver in:\n{conf}");
    assert!(
        servers.iter().all(|a| !a.is_loopback()),
        "loopback nameserver in the sandbox:\n{conf}"
    );
    assert!(
        answer.contains(&net.u4.to_string()) || answer.contains(&net.u6.to_string()),
        "{out}"
    );
    d.finish();
}

/// Tries to connect to the socket (argv[1]) and read the config (argv[2]).
const REACH_DAEMON: &str = r#"
import socket, sys
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(sys.argv[1])
    print("socket: connected")
except Exception as e:
    print("socket: failed %s" % type(e).__name__)
try:
    with open(sys.argv[2]) as f:
        print("config: read\n" + f.read())
except Exception as e:
    print("config: failed %s" % type(e).__name__)
"#;

#[test]
fn daemon_socket_and_config_are_out_of_reach() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();

    // Control: outside a sandbox the test user reaches both.
    let mut cmd = d.caller_command(&user, tool("python3"));
    cmd.args(["-c", REACH_DAEMON]).arg(&d.socket).arg(&d.config);
    let o = run_command(cmd, std::time::Duration::from_secs(30));
    assert!(
        stdout(&o).contains("socket: connected") && stdout(&o).contains(CONFIG_MARKER),
        "control outside the sandbox: {}",
        describe(&o)
    );

    for caller in [user, root()] {
        let o = d
            .exec(&caller)
            .args(["python3", "-c", REACH_DAEMON])
            .args([&d.socket, &d.config])
            .run();
        let out = stdout(&o);
        assert!(
            out.contains("socket: failed"),
            "{}: {}",
            caller.name,
            describe(&o)
        );
        assert!(
            !out.contains(CONFIG_MARKER),
            "{}: {}",
            caller.name,
            describe(&o)
        );
    }

    // A reload of a config that names another socket (which takes a restart) leaves the live one out of
    // reach all the same.
    let text = fs::read_to_string(&d.config).unwrap();
    let moved = d.dir.join("moved.sock");
    d.write_config(&text.replace(
        &d.socket.display().to_string(),
        &moved.display().to_string(),
    ));
    d.signal(Signal::SIGHUP);
    wait_for(SETTLE, || {
        d.logs().contains("config reloaded").then_some(())
    })
    .unwrap_or_else(|| panic!("no reload: {}", d.logs()));
    let o = d
        .exec(&test_user())
        .args(["python3", "-c", REACH_DAEMON])
        .args([&d.socket, &d.config])
        .run();
    assert!(
        stdout(&o).contains("socket: failed"),
        "after a reload naming {}: {}",
        moved.display(),
        describe(&o)
    );
    d.finish();
}

/// Numbers under keys that mention "bytes", anywhere in an audit line.
fn byte_counters(v: &Value, key: &str, out: &mut Vec<u64>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| byte_counters(v, k, out)),
        Value::Number(n) if key.contains("bytes") => out.extend(n.as_u64()),
        _ => {}
    }
}

#[test]
fn audit_log_records_tcp_and_never_a_secret() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let secret = format!("sbx-e2e-secret-{}", net.suffix);
    let d = net
        .daemon()
        .env("SBX_TEST_SECRET", &secret)
        .extra_toml(
            r#"
[secrets]
t = { env = "SBX_TEST_SECRET" }

[[integration]]
name = "t"
hosts = ["secret.test"]
headers = { X-Test-Token = "Bearer ${secret:t}" }

[[profile]]
name = "withsecret"
users = ["*"]
integrations = ["t"]
"#,
        )
        .start();
    let user = test_user();
    let url = format!("http://{}/", net.u4);
    let script = format!("{c} && {c} && env", c = curl(&url).join(" "));
    let o = d
        .exec(&user)
        .profile("withsecret")
        .args(["sh", "-c", &script])
        .run();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o).matches(UPSTREAM_MARKER).count(),
        2,
        "{}",
        describe(&o)
    );
    assert!(
        !stdout(&o).contains(&secret),
        "the secret is in the sandbox's environment"
    );

    let dest = format!("{}:80", net.u4);
    let tcp_lines = || -> Vec<Value> {
        d.audit_lines()
            .into_iter()
            .filter(|l| {
                let dst = match &l["destination"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                l["kind"] == "tcp" && dst.contains(&net.u4.to_string()) && dst.contains("80")
            })
            .collect()
    };
    let lines = wait_for(SETTLE, || {
        let l = tcp_lines();
        (l.len() >= 2).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected 2 audit lines of kind tcp to {dest}:\n{}",
            std::fs::read_to_string(&d.audit_log).unwrap_or_default()
        )
    });
    for l in &lines {
        assert_eq!(l["verdict"], "passed", "{l}");
        let uid = match &l["uid"] {
            Value::String(s) => s.parse().ok(),
            v => v.as_u64(),
        };
        assert_eq!(uid, Some(u64::from(user.uid)), "uid: {l}");
        assert_eq!(l["profile"], "withsecret", "{l}");
        let mut counters = Vec::new();
        byte_counters(l, "", &mut counters);
        assert!(
            counters.len() >= 2 && counters.iter().all(|&n| n > 0),
            "bytes each way: {l}"
        );
    }

    let audit = std::fs::read_to_string(&d.audit_log).unwrap();
    assert!(!audit.contains(&secret), "the secret is in the audit log");
    assert!(
        !d.logs().contains(&secret),
        "the secret is in the daemon's log"
    );
    assert!(
        !net.http_requests().iter().any(|r| r.head.contains(&secret)),
        "the secret went out over plain HTTP"
    );
    d.finish();
}

/// Something else on the host removes every nftables rule (`nft flush ruleset`, as restarting
/// nftables.service does) and the policy routing: without them a sandbox would reach the host's own
/// services. The daemon puts both back, with the live sandboxes' elements; likewise a chain emptied of
/// its rules.
#[test]
fn a_flushed_ruleset_and_policy_routing_are_restored() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let live = d.exec(&user).args(["sleep", "60"]).spawn();
    let has_elements = || {
        net.set_elements()
            .ok()
            .filter(|sets| sets.iter().take(2).all(|(_, n)| *n > 0))
    };
    assert!(
        wait_for(SETTLE, has_elements).is_some(),
        "no elements for the live sandbox"
    );

    for args in [
        &["nft", "flush", "ruleset"][..],
        &["ip", "rule", "del", "fwmark", "0x5ba/0x5ba"][..],
    ] {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &net.h])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    }
    // The daemon is told of the flush and may have put the table back already: its log says it saw it.
    assert!(
        wait_for(SETTLE, || d
            .logs()
            .contains("the nftables table inet sandbox was removed or changed")
            .then_some(()))
        .is_some(),
        "the daemon did not notice the flush\n{}",
        d.logs()
    );
    assert!(
        wait_for(SETTLE, has_elements).is_some(),
        "the table with the live sandbox's elements was not restored\n{}",
        d.logs()
    );
    assert!(
        wait_for(SETTLE, || (!net.mark_rules().is_empty()).then_some(())).is_some(),
        "the fwmark rule was not restored\n{}",
        d.logs()
    );

    // Emptying the chain but leaving the table and its sets is noticed too.
    let rules = || {
        net.sandbox_table().map_or(0, |table| {
            table["nftables"].as_array().map_or(0, |items| {
                items.iter().filter(|i| i.get("rule").is_some()).count()
            })
        })
    };
    let installed = rules();
    assert!(installed > 0, "no rules in the restored table");
    let status = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.h,
            "nft",
            "flush",
            "chain",
            "inet",
            "sandbox",
            "prerouting",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        has_elements().is_some(),
        "the flush removed the elements too"
    );
    assert!(
        wait_for(SETTLE, || (rules() == installed
            && has_elements().is_some())
        .then_some(()))
        .is_some(),
        "the emptied chain was not restored ({} rules of {installed})\n{}",
        rules(),
        d.logs()
    );

    let o = d
        .exec(&user)
        .args([
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{}:8080/", net.h4),
        ])
        .run();
    assert_ne!(code(&o), 0, "the host's service answered: {}", describe(&o));
    let o = d
        .exec(&user)
        .args([
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{}/", net.u4),
        ])
        .run();
    assert_code(&o, 0);
    assert_eq!(net.host_service_connections(), Vec::<SocketAddr>::new());
    live.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = live.finish();
    d.finish();
}
