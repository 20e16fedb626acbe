//! End-to-end tests of the daemon's life: SIGTERM and SIGKILL while a command runs (and what is left
//! afterwards), bad input on the socket, `daemon --check` on bad configs, SIGHUP reloads.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn sigterm_to_daemon_ends_commands_and_cleans_up() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let mut d = net.daemon().start();
    let user = test_user();
    let marker = d.work.join("got-term");
    let script = format!(
        "trap 'echo term > \"{}\"; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        marker.display()
    );
    let mut r = d.exec(&user).args(["sh", "-c", &script]).spawn();
    r.wait_for_line("ready");
    net.assert_sandbox_objects_present();

    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "daemon exit on SIGTERM: {status}\n{}",
        d.logs()
    );
    assert!(
        wait_for(SETTLE, || marker.exists().then_some(())).is_some(),
        "the command did not get SIGTERM"
    );
    r.wait(Duration::from_secs(10));
    net.assert_no_daemon_objects();
}

#[test]
fn sigkill_to_daemon_kills_commands_and_restart_cleans_up() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let mut d = net.daemon().start();
    let user = test_user();
    let tag = unique_sleep();
    let mut r = d
        .exec(&user)
        .args(["sh", "-c", &format!("echo ready; exec sleep {tag}")])
        .spawn();
    r.wait_for_line("ready");
    assert!(
        wait_for(SETTLE, || {
            (!processes_with_argv(user.uid, &["sleep", &tag]).is_empty()).then_some(())
        })
        .is_some(),
        "the sandboxed sleep is not visible in /proc"
    );
    net.assert_sandbox_objects_present();

    d.kill9();
    assert_no_process(user.uid, &["sleep", &tag]);
    r.wait(Duration::from_secs(10));
    // A killed daemon cannot clean up: its set elements are still there for the restart to remove.
    let stale = net.set_elements().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stale.iter().any(|(_, n)| *n > 0),
        "no stale set element after SIGKILL: {stale:?}"
    );

    d.restart();
    net.assert_no_sandbox_objects();
    assert_code(&d.exec(&user).args(["true"]).run(), 0);
    d.finish();
}

#[test]
fn bad_input_on_the_socket_does_not_take_the_daemon_down() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let mut d = net.daemon().start();
    let user = test_user();
    let connect = || UnixStream::connect(&d.socket).expect("connect to the daemon socket");

    // Garbage, then close.
    let garbage: Vec<u8> = (0u32..4096).map(|i| (i * 7 + 13) as u8).collect();
    let _ = connect().write_all(&garbage);
    // A huge length prefix (whatever the framing, this announces gigabytes), then close.
    let _ = connect().write_all(&[0xff; 16]);
    // Connect and close at once, and half-close after a few bytes.
    drop(connect());
    let s = connect();
    let _ = (&s).write_all(b"{\"");
    let _ = s.shutdown(std::net::Shutdown::Write);
    drop(s);
    // Many idle connections held open while others are served.
    let idle: Vec<UnixStream> = (0..200).map(|_| connect()).collect();

    assert_code(&d.exec(&user).args(["true"]).run(), 0);
    assert!(d.is_running(), "daemon died\n{}", d.logs());
    drop(idle);
    assert_code(&d.exec(&user).args(["true"]).run(), 0);
    d.finish();
}

#[test]
fn check_reports_bad_config_with_position() {
    if skip_without_binary() {
        return;
    }
    let dir = TempDir::new("cfg", 0o755);
    let check = |name: &str, text: &str| {
        let sub = dir.join(name);
        fs::create_dir(&sub).unwrap();
        let path = sub.join("bad.toml");
        fs::write(&path, text).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["daemon", "--check", "--config"]).arg(&path);
        run_command(cmd, Duration::from_secs(30))
    };

    let good = "[daemon]\nsubnet = \"10.233.0.0/16\"\n\n[[profile]]\nname = \"default\"\nusers = [\"*\"]\n";
    let o = check("good", good);
    assert_code(&o, 0);

    let cases = [
        (
            "unknown-key",
            "[daemon]\nsubnet = \"10.233.0.0/16\"\nno_such_key = true\n",
            3,
        ),
        (
            "bad-subnet",
            "[daemon]\nsocket = \"/run/sandbox/sandbox.sock\"\nsubnet = \"10.233.0.0/33\"\n",
            3,
        ),
    ];
    for (name, text, line) in cases {
        let o = check(name, text);
        assert_code(&o, 2);
        let all = format!("{}{}", stderr(&o), stdout(&o));
        let prefix = format!("bad.toml:{line}:");
        let at = all
            .find(&prefix)
            .unwrap_or_else(|| panic!("{name}: no `{prefix}COL:` in: {all}"));
        let rest = &all[at + prefix.len()..];
        let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
        assert!(
            !col.is_empty() && rest[col.len()..].starts_with(':'),
            "{name}: expected bad.toml:{line}:COL: in: {all}"
        );
    }
}

#[test]
fn sighup_reloads_config_and_keeps_the_old_one_when_broken() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let mut d = net.daemon().start();
    let user = test_user();
    let newone = |d: &Daemon| code(&d.exec(&user).profile("newone").args(["true"]).run());
    assert_eq!(newone(&d), 125, "profile newone before the reload");

    d.write_config(&d.config_text("[[profile]]\nname = \"newone\"\nusers = [\"*\"]\n"));
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(SETTLE, || (newone(&d) == 0).then_some(())).is_some(),
        "profile newone not usable after SIGHUP\n{}",
        d.logs()
    );

    // Broken config without newone: if any of it were applied, newone would be gone.
    let log_len = d.logs().len();
    d.write_config(&format!("{}\nthis is not toml\n", d.config_text("")));
    d.signal(Signal::SIGHUP);
    // The daemon reports the bad config on its log; wait for that (bounded) before probing.
    wait_for(SETTLE, || (d.logs().len() > log_len).then_some(()));
    assert!(
        d.is_running(),
        "daemon died on a broken config\n{}",
        d.logs()
    );
    assert_eq!(newone(&d), 0, "old config not kept\n{}", d.logs());

    // Valid TOML that cannot be loaded (a secret file that is not there, an upstream_ca that is not
    // there), without newone: refused whole, the old config kept.
    for broken in [
        "[secrets]\nk = { file = \"/nonexistent/sandbox-secret\" }\n",
        "",
    ] {
        let log_len = d.logs().len();
        let mut text = d.config_text(broken);
        if broken.is_empty() {
            text = text.replacen(
                "[daemon]\n",
                "[daemon]\nupstream_ca = [\"/nonexistent/ca.pem\"]\n",
                1,
            );
        }
        d.write_config(&text);
        d.signal(Signal::SIGHUP);
        let reported = wait_for(SETTLE, || {
            d.logs()[log_len..]
                .contains("config reload failed, keeping the previous config")
                .then_some(())
        });
        assert!(reported.is_some(), "{broken:?}: {}", d.logs());
        assert!(
            d.logs()[log_len..].contains("/nonexistent/"),
            "{}",
            d.logs()
        );
        assert_eq!(
            newone(&d),
            0,
            "{broken:?}: old config not kept\n{}",
            d.logs()
        );
    }
    assert_code(&d.exec(&user).args(["true"]).run(), 0);
    d.finish();
}

/// A second daemon started by mistake, with the same config, fails with a clear message before it
/// touches anything: the running daemon's sandboxes keep their network (their veths, the table). A
/// daemon.socket that names an existing file other than a socket is an error, and the file is kept.
#[test]
fn a_second_daemon_leaves_the_first_alone() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let mut r = d
        .exec(&user)
        .stdin_piped()
        .args([
            "sh",
            "-c",
            &format!(
                "echo ready; read _; curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}\\n' http://{DNS_NAME}/"
            ),
        ])
        .spawn();
    r.wait_for_line("ready");
    let links = net.sbx_links();
    assert_eq!(links.len(), 1, "{links:?}");
    // What `finish` checks is gone once the sandbox ends is visible while it runs.
    assert_eq!(d.held_namespaces().len(), 1, "{:?}", d.held_namespaces());

    let second = |config: &std::path::Path| {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &net.h])
            .arg(bin())
            .args(["daemon", "--config"])
            .arg(config);
        run_command(cmd, Duration::from_secs(30))
    };
    let o = second(&d.config);
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("another daemon is already listening"),
        "{}",
        describe(&o)
    );
    assert_eq!(
        net.sbx_links(),
        links,
        "the second daemon removed the first's veth"
    );
    net.assert_sandbox_objects_present();
    r.write_stdin(b"go\n");
    let o = r.finish();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o).lines().last(),
        Some("200"),
        "the first daemon's sandbox lost its network: {}",
        describe(&o)
    );

    let file = d.dir.join("not-a-socket");
    fs::write(&file, "keep me").unwrap();
    let text = fs::read_to_string(&d.config)
        .unwrap()
        .replace(&d.socket.display().to_string(), &file.display().to_string());
    let config = d.dir.join("other.toml");
    fs::write(&config, text).unwrap();
    let o = second(&config);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("is not a socket"), "{}", describe(&o));
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
    d.finish();
}

/// `sandbox doctor` on this machine (run in the test's own "host" namespace, which has IPv6): every
/// check passes, and the kernel checks try IPv6 as well as IPv4 (they ran in a namespace whose loopback
/// was down, and skipped IPv6 there whatever the host had).
#[test]
fn doctor_checks_the_kernel_for_both_families() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let mut cmd = Command::new(tool("ip"));
    cmd.args(["netns", "exec", &net.h]).arg(bin()).arg("doctor");
    let o = run_command(cmd, Duration::from_secs(60));
    assert_code(&o, 0);
    let out = stdout(&o);
    for line in [
        "ok    nftables with tproxy:",
        "ok    policy routing: fwmark rule and local route table, IPv4 and IPv6",
        "ok    veth: veth pair into a new namespace, IPv4 and IPv6",
        "ok    IPv6: available",
    ] {
        assert!(out.contains(line), "no {line:?}: {}", describe(&o));
    }
    net.assert_no_daemon_objects();
}
