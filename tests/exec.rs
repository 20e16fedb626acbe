//! End-to-end tests of `sandbox exec` against a real daemon: exit statuses, the child's identity and
//! privileges, argv/env/cwd/stdio passing, a terminal session, signals, the PID namespace and `sandbox ls`.
//! Root only (skipped otherwise unless CI=true); every test ends with the leak checks of `Daemon::finish`.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const CAP_LINES: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Invariant 4: a descriptor the daemon inherited from whatever started it (a shell's, a supervisor's) never
/// reaches a sandbox. The command starts with stdin, stdout and stderr only.
#[test]
fn the_command_gets_none_of_the_daemons_descriptors() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let stray = TempDir::new("stray", 0o755);
    let path = stray.join("daemon-only");
    fs::write(&path, "not for sandboxes").unwrap();
    let d = net.daemon().stray_fd(&path).start();
    let held = fs::read_link(format!("/proc/{}/fd/{STRAY_FD}", d.pid())).unwrap();
    assert_eq!(
        held, path,
        "the daemon should hold the stray file (the test's premise)"
    );

    let o = d
        .exec(&test_user())
        .args(["sh", "-c", "ls -l /proc/self/fd/ /proc/$$/fd/"])
        .run();
    assert_code(&o, 0);
    let listing = stdout(&o);
    assert!(listing.contains(" 0 -> "), "{listing}");
    assert!(
        !listing.contains(&path.display().to_string()),
        "the daemon's descriptor reached the sandbox:\n{listing}"
    );
    d.finish();
}

#[test]
fn exit_statuses() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let run = |args: &[&str]| d.exec(&user).args(args).run();

    assert_code(&run(&["true"]), 0);
    assert_code(&run(&["sh", "-c", "exit 3"]), 3);
    assert_code(&run(&["sh", "-c", "kill -TERM $$"]), 128 + 15);

    let o = run(&["no-such-command-e2e", "arg"]);
    assert_code(&o, 127);
    assert!(
        stderr(&o).contains("no-such-command-e2e"),
        "stderr should name the missing command: {}",
        describe(&o)
    );

    let script = d.work.join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&[script.to_str().unwrap()]);
    assert_code(&o, 126);
    assert!(!stdout(&o).contains("ran"), "{}", describe(&o));

    // No sandbox could be made: 125 and the reason.
    let o = d
        .exec(&user)
        .socket(d.dir.join("no-such.sock"))
        .args(["true"])
        .run();
    assert_code(&o, 125);
    assert!(
        stderr(&o).contains("no-such.sock"),
        "stderr should name the socket: {}",
        describe(&o)
    );
    let o = d.exec(&user).profile("rootonly").args(["true"]).run();
    assert_code(&o, 125);
    assert!(
        stderr(&o).contains("rootonly"),
        "stderr should name the refused profile: {}",
        describe(&o)
    );
    let o = d
        .exec(&user)
        .profile("no-such-profile")
        .args(["true"])
        .run();
    assert_code(&o, 125);
    assert!(!stderr(&o).trim().is_empty(), "{}", describe(&o));
    // The profile refused to sbxtest is usable by its user, so the refusals above are about identity.
    assert_code(&d.exec(&root()).profile("rootonly").args(["true"]).run(), 0);

    d.finish();
}

/// `id -u`, `id -g`, `id -G`, then /proc/self/status of a process inside the sandbox.
fn identity_inside(d: &Daemon, caller: &Caller) -> (u32, u32, Vec<u32>, String) {
    let o = d
        .exec(caller)
        .args(["sh", "-c", "id -u; id -g; id -G; cat /proc/self/status"])
        .run();
    assert_code(&o, 0);
    let text = stdout(&o);
    let mut lines = text.lines();
    let mut num = || lines.next().unwrap().trim().parse::<u32>().unwrap();
    let (uid, gid) = (num(), num());
    let mut groups: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    let status = lines.collect::<Vec<_>>().join("\n");
    (uid, gid, groups, status)
}

fn assert_no_privileges(status: &str) {
    for cap in CAP_LINES {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{cap}:")))
            .unwrap_or_else(|| panic!("no {cap} in /proc/self/status:\n{status}"));
        let value = u64::from_str_radix(line[cap.len() + 1..].trim(), 16).unwrap();
        assert_eq!(value, 0, "{line}");
    }
    // A command starts like one run from a shell: nothing blocked, nothing ignored (not even the
    // SIGPIPE that Rust programs ignore for themselves).
    for field in ["SigBlk", "SigIgn"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in:\n{status}"));
        let value = u64::from_str_radix(line[field.len() + 1..].trim(), 16).unwrap();
        assert_eq!(value, 0, "{line}");
    }
    let nnp = status
        .lines()
        .find(|l| l.starts_with("NoNewPrivs:"))
        .unwrap_or_else(|| panic!("no NoNewPrivs in:\n{status}"));
    assert_eq!(nnp.split_whitespace().nth(1), Some("1"), "{nnp}");
}

#[test]
fn identity_and_privileges() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();

    let user = test_user();
    let (uid, gid, groups, status) = identity_inside(&d, &user);
    assert_eq!((uid, gid), (user.uid, user.gid));
    let mut want = user.groups.clone();
    want.sort_unstable();
    assert_eq!(groups, want, "supplementary groups");
    assert_no_privileges(&status);

    // Root as the caller stays uid 0 but gets no capability either.
    let (uid, gid, _, status) = identity_inside(&d, &root());
    assert_eq!((uid, gid), (0, 0));
    assert_no_privileges(&status);

    d.finish();
}

#[test]
fn argv_env_and_cwd_arrive_intact() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net
        .daemon()
        .env("SBX_E2E_DAEMON_ONLY", "daemon-env-must-not-leak")
        .start();
    let user = test_user();

    let args = [
        "a b",
        "  leading and trailing  ",
        "it's",
        "say \"hi\"",
        "ünïcödé ✓ 日本語",
        "",
        "$HOME `id` $(id)",
        "*",
        "--",
        "-x",
        "back\\slash",
        "new\nline",
        "tab\there",
        "",
    ];
    let o = d
        .exec(&user)
        .args([
            "python3",
            "-c",
            "import json, sys; print(json.dumps(sys.argv[1:]))",
        ])
        .args(args)
        .run();
    assert_code(&o, 0);
    let got: Vec<String> = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(got, args);

    let value = "some value = with 'quotes' and ✓";
    let o = d
        .exec(&user)
        .env("SBX_E2E_VALUE", value)
        .args(["env"])
        .run();
    assert_code(&o, 0);
    let env = stdout(&o);
    assert!(
        env.lines().any(|l| l == format!("SBX_E2E_VALUE={value}")),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == format!("PATH={STD_PATH}")),
        "{env}"
    );
    assert!(!env.contains("daemon-env-must-not-leak"), "{env}");

    for caller in [user.clone(), root()] {
        let dir = d.work.join(format!("sub dir {}", caller.name));
        fs::create_dir(&dir).unwrap();
        nix::unistd::chown(&dir, Some(user.uid.into()), Some(user.gid.into())).unwrap();
        let o = d.exec(&caller).cwd(&dir).args(["pwd"]).run();
        assert_code(&o, 0);
        assert_eq!(stdout(&o).trim_end_matches('\n'), dir.to_str().unwrap());
    }

    d.finish();
}

#[test]
fn stdio_pipes_and_files() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();

    // 1 MiB through stdin and back on stdout, stderr kept apart.
    let input: Vec<u8> = (0u32..1 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let o = d
        .exec(&user)
        .stdin(input.clone())
        .args(["sh", "-c", "cat; echo err-line >&2"])
        .run();
    assert_code(&o, 0);
    assert!(o.stdout == input, "stdout differs from stdin");
    assert_eq!(stderr(&o), "err-line\n");

    // stdin from /dev/null: immediate EOF.
    let o = d.exec(&user).args(["cat"]).run();
    assert_code(&o, 0);
    assert!(o.stdout.is_empty());

    // stdout to a file the caller opened (root-owned: the command writes through the passed fd).
    let path = d.work.join("out.txt");
    let file = File::create(&path).unwrap();
    let o = d
        .exec(&user)
        .stdout_file(file)
        .args(["sh", "-c", "echo to-file; echo to-err >&2"])
        .run();
    assert_code(&o, 0);
    assert_eq!(fs::read_to_string(&path).unwrap(), "to-file\n");
    assert_eq!(stderr(&o), "to-err\n");

    // A caller that closed stdin and stderr (`<&- 2>&-`): the command finds /dev/null there (Rust's
    // start-up opens it on a closed standard descriptor), never the client's connection to the daemon,
    // which would otherwise take the lowest free number and reach the sandbox.
    let mut cmd = d.caller_command(&user, tool("sh"));
    cmd.arg("-c")
        .arg("exec \"$0\" exec --socket \"$1\" -- sh -c 'readlink /proc/self/fd/0 /proc/self/fd/2 >&1' <&- 2>&-")
        .arg(bin())
        .arg(&d.socket);
    let o = run_command(cmd, std::time::Duration::from_secs(30));
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "/dev/null\n/dev/null\n", "{}", describe(&o));

    d.finish();
}

/// Drives `sandbox exec -- bash --norc -i` on a pseudo-terminal.
const TTY_SCRIPT: &str = r#"
import os, pty, select, sys, time
bin, sock = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(bin, [bin, "exec", "--socket", sock, "--", "bash", "--norc", "-i"])
buf = b""
def fail(msg):
    print("FAIL %s; output so far: %r" % (msg, buf))
    sys.exit(1)
def expect(pat, timeout=15):
    global buf
    end = time.time() + timeout
    while pat not in buf:
        left = end - time.time()
        if left <= 0:
            fail("timeout waiting for %r" % pat)
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                fail("EOF waiting for %r" % pat)
            buf += data
    seen = buf[: buf.index(pat) + len(pat)]
    buf = buf[len(seen):]
    return seen
os.write(fd, b"echo hi-$((40+2))\n")
expect(b"hi-42")
os.write(fd, b"echo start-$((2+3)); sleep 100; echo after-$((1+1))\n")
expect(b"start-5")
time.sleep(0.5)
os.write(fd, b"\x03")
seen = expect(b"sbx-prompt> ")
if b"after-2" in seen:
    fail("the command list went on after Ctrl-C")
os.write(fd, b"echo back-$((3+4))\n")
expect(b"back-7")
os.write(fd, b"exit 7\n")
end = time.time() + 15
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            if not os.read(fd, 4096):
                break
        except OSError:
            break
    wpid, status = os.waitpid(pid, os.WNOHANG)
    if wpid:
        print("CLIENT_EXIT=%d" % os.waitstatus_to_exitcode(status))
        sys.exit(0)
_, status = os.waitpid(pid, 0)
print("CLIENT_EXIT=%d" % os.waitstatus_to_exitcode(status))
"#;

#[test]
fn terminal_session_with_ctrl_c() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let mut cmd = d.caller_command(&test_user(), tool("python3"));
    cmd.env("PS1", "sbx-prompt> ")
        .env("TERM", "dumb")
        .arg("-c")
        .arg(TTY_SCRIPT)
        .arg(bin())
        .arg(&d.socket);
    let o = run_command(cmd, Duration::from_secs(60));
    assert!(
        stdout(&o).contains("CLIENT_EXIT=7"),
        "terminal session: {}",
        describe(&o)
    );
    d.finish();
}

fn signal_reaches_command(sig: Signal, name: &str) {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let script =
        format!("trap 'echo got; exit 42' {name}; echo ready; while :; do sleep 0.1; done");
    let mut r = d.exec(&test_user()).args(["sh", "-c", &script]).spawn();
    r.wait_for_line("ready");
    r.signal(sig);
    let o = r.finish();
    assert!(stdout(&o).contains("got"), "{name}: {}", describe(&o));
    assert_code(&o, 42);
    d.finish();
}

#[test]
fn sigterm_reaches_command() {
    signal_reaches_command(Signal::SIGTERM, "TERM");
}

#[test]
fn sigint_reaches_command() {
    signal_reaches_command(Signal::SIGINT, "INT");
}

#[test]
fn sighup_reaches_command() {
    signal_reaches_command(Signal::SIGHUP, "HUP");
}

#[test]
fn pid_namespace_ends_with_command() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let tag = unique_sleep();
    let o = d
        .exec(&user)
        .args([
            "sh",
            "-c",
            &format!("echo $$; sleep {tag} >/dev/null 2>&1 & exit 0"),
        ])
        .run();
    assert_code(&o, 0);
    let pid: u32 = stdout(&o).trim().parse().unwrap();
    assert!(pid <= 3, "the command's pid inside the sandbox is {pid}");
    assert_no_process(user.uid, &["sleep", &tag]);
    d.finish();
}

#[test]
fn ls_lists_running_sandbox() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let tag = unique_sleep();
    // One connection with bytes both ways first, so that the counters have something to show.
    let mut r = d
        .exec(&user)
        .args([
            "sh",
            "-c",
            &format!(
                "curl -sS --max-time 5 -o /dev/null http://{DNS_NAME}/ && echo ready; exec sleep {tag}"
            ),
        ])
        .spawn();
    r.wait_for_line("ready");
    let found = wait_for(SETTLE, || {
        (!processes_with_argv(user.uid, &["sleep", &tag]).is_empty()).then_some(())
    });
    assert!(
        found.is_some(),
        "the sandboxed sleep is not visible in /proc"
    );
    net.assert_sandbox_objects_present();

    let o = d.ls();
    assert_code(&o, 0);
    let listing = stdout(&o);
    let line = listing
        .lines()
        .find(|l| l.contains("sleep"))
        .unwrap_or_else(|| panic!("no sandbox running `sleep` in:\n{listing}"));
    assert!(
        line.contains(TEST_USER) || line.contains(&user.uid.to_string()),
        "user missing: {line}"
    );
    assert!(line.contains("default"), "profile missing: {line}");

    // The same through SANDBOX_SOCKET, as JSON: every column has its value.
    let o = std::process::Command::new(bin())
        .args(["ls", "--json"])
        .env("SANDBOX_SOCKET", &d.socket)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_code(&o, 0);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sandboxes = listed.as_array().unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(sandboxes.len(), 1, "{listed}");
    let s = &sandboxes[0];
    let id = s["id"].as_str().unwrap();
    assert!(
        line.starts_with(id),
        "table and JSON disagree: {line} / {s}"
    );
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s}"
    );
    assert_eq!(s["user"], TEST_USER, "{s}");
    assert_eq!(s["uid"], user.uid, "{s}");
    assert_eq!(s["profile"], "default", "{s}");
    let pid = s["pid"].as_u64().unwrap();
    assert!(
        fs::metadata(format!("/proc/{pid}")).is_ok(),
        "pid {pid} is not a live process: {s}"
    );
    assert!(s["command"].as_str().unwrap().contains("sleep"), "{s}");
    assert!(s["age_secs"].as_u64().unwrap() < 60, "{s}");
    assert!(s["connections"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["bytes_up"].as_u64().unwrap() > 0, "{s}");
    assert!(s["bytes_down"].as_u64().unwrap() > 0, "{s}");

    r.signal(Signal::SIGTERM);
    let o = r.finish();
    assert_code(&o, 128 + 15);
    assert_no_process(user.uid, &["sleep", &tag]);
    let gone = wait_for(SETTLE, || {
        let o = d.ls();
        (o.status.success() && !stdout(&o).contains("sleep")).then_some(())
    });
    assert!(
        gone.is_some(),
        "ended sandbox still listed:\n{}",
        stdout(&d.ls())
    );
    d.finish();
}
