use std::ffi::CStr;

use super::*;

/// A system call the command's process made, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    ResetSignals,
    ResetOomScore,
    ReadOpenFilesLimit,
    SetOpenFilesLimit {
        soft: u64,
        hard: u64,
    },
    NewSession,
    TakeTerminal,
    DropFromBoundingSet(libc::c_int),
    SetGroups(Vec<u32>),
    SetGid(u32),
    SetUid(u32),
    /// `caps::CapSet` by name: it has no `PartialEq`.
    ClearCapabilities(String),
    SetNoNewPrivs,
    SetDumpable(bool),
    SetParentDeathSignal,
    InstallSocketFilter,
    HandOverListener,
    Chdir(PathBuf),
    OnlyStdioOnExec,
    Exec(Vec<u8>),
}

/// Records the calls in order and never reaches the kernel; fails the call numbered `fail_at` (from 0)
/// with EPERM.
struct Fake {
    calls: Vec<Call>,
    fail_at: Option<usize>,
    /// How many capabilities the fake kernel knows: 41 for Linux 5.9 and later.
    known_capabilities: libc::c_int,
    hard_open_files: u64,
    /// What exec of a path returns; ENOENT for the others. The fake never replaces the process, so exec
    /// always returns: a test tells a command that would have run by the `Exec` it recorded.
    exec_errors: Vec<(&'static [u8], Errno)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            calls: Vec::new(),
            fail_at: None,
            known_capabilities: 41,
            hard_open_files: 4096,
            exec_errors: Vec::new(),
        }
    }
}

impl Fake {
    fn call(&mut self, call: Call) -> io::Result<()> {
        let step = self.calls.len();
        self.calls.push(call);
        if self.fail_at == Some(step) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

impl Sys for Fake {
    fn reset_signals(&mut self, _mask: &SigSet) -> io::Result<()> {
        self.call(Call::ResetSignals)
    }

    fn reset_oom_score(&mut self) -> io::Result<()> {
        self.call(Call::ResetOomScore)
    }

    fn open_files_hard_limit(&mut self) -> io::Result<u64> {
        self.call(Call::ReadOpenFilesLimit)?;
        Ok(self.hard_open_files)
    }

    fn set_open_files_limit(&mut self, soft: u64, hard: u64) -> io::Result<()> {
        self.call(Call::SetOpenFilesLimit { soft, hard })
    }

    fn new_session(&mut self) -> io::Result<()> {
        self.call(Call::NewSession)
    }

    fn take_terminal(&mut self) -> io::Result<()> {
        self.call(Call::TakeTerminal)
    }

    fn drop_from_bounding_set(&mut self, cap: libc::c_int) -> io::Result<bool> {
        // Asking about a capability the kernel does not know changes nothing: not a step.
        if cap >= self.known_capabilities {
            return Ok(false);
        }
        self.call(Call::DropFromBoundingSet(cap))?;
        Ok(true)
    }

    fn set_groups(&mut self, groups: &[Gid]) -> io::Result<()> {
        self.call(Call::SetGroups(
            groups.iter().map(|gid| gid.as_raw()).collect(),
        ))
    }

    fn set_gid(&mut self, gid: Gid) -> io::Result<()> {
        self.call(Call::SetGid(gid.as_raw()))
    }

    fn set_uid(&mut self, uid: Uid) -> io::Result<()> {
        self.call(Call::SetUid(uid.as_raw()))
    }

    fn clear_capabilities(&mut self, set: caps::CapSet) -> io::Result<()> {
        self.call(Call::ClearCapabilities(format!("{set:?}")))
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.call(Call::SetNoNewPrivs)
    }

    fn set_dumpable(&mut self, dumpable: bool) -> io::Result<()> {
        self.call(Call::SetDumpable(dumpable))
    }

    fn set_parent_death_signal(&mut self) -> io::Result<()> {
        self.call(Call::SetParentDeathSignal)
    }

    fn install_socket_filter(&mut self) -> io::Result<OwnedFd> {
        self.call(Call::InstallSocketFilter)?;
        // A descriptor to hand over; the fake kernel has no filter.
        File::open("/dev/null").map(OwnedFd::from)
    }

    fn hand_over_listener(&mut self, _listener: OwnedFd) -> io::Result<()> {
        self.call(Call::HandOverListener)
    }

    fn chdir(&mut self, dir: &Path) -> io::Result<()> {
        self.call(Call::Chdir(dir.to_path_buf()))
    }

    fn only_stdio_on_exec(&mut self) -> io::Result<()> {
        self.call(Call::OnlyStdioOnExec)
    }

    fn exec(&mut self, path: &CStr, _argv: &[CString], _envp: &[CString]) -> Errno {
        let path = path.to_bytes();
        self.calls.push(Call::Exec(path.to_vec()));
        self.exec_errors
            .iter()
            .find(|(failing, _)| *failing == path)
            .map_or(Errno::ENOENT, |&(_, error)| error)
    }
}

fn bytes(text: &str) -> Bytes {
    Bytes(text.as_bytes().to_vec())
}

/// A caller (uid 1000) running /bin/true in /home/caller, without a terminal.
fn spec() -> InitSpec {
    InitSpec {
        argv: vec![bytes("/bin/true")],
        env: vec![(bytes("PATH"), bytes("/usr/bin:/bin"))],
        cwd: bytes("/home/caller"),
        uid: 1000,
        gid: 1001,
        groups: vec![1001, 27],
        tty: false,
        hide: Vec::new(),
        replace: Vec::new(),
        caller_files: Vec::new(),
        add_ca: Vec::new(),
        ca_pem: String::new(),
        java_keystores: Vec::new(),
        nofile_soft: 1024,
        unix_sockets: Vec::new(),
    }
}

/// Runs the command's set-up against `fake`: its exit status and message.
fn run(fake: &mut Fake, spec: &InitSpec) -> (i32, String) {
    run_command(fake, spec, &SigSet::empty())
}

fn clear(set: &str) -> Call {
    Call::ClearCapabilities(set.to_string())
}

/// How the command and PID 1 alike drop to the caller of `spec()`: bounding set (41 capabilities on
/// the fake), groups, gid, uid, every capability set, no_new_privs.
fn becoming_the_caller() -> Vec<Call> {
    let mut calls: Vec<Call> = (0..41).map(Call::DropFromBoundingSet).collect();
    calls.extend([
        Call::SetGroups(vec![1001, 27]),
        Call::SetGid(1001),
        Call::SetUid(1000),
        clear("Ambient"),
        clear("Inheritable"),
        clear("Effective"),
        clear("Permitted"),
        Call::SetNoNewPrivs,
    ]);
    calls
}

/// Where the first call `matches` is in `calls`.
fn position(calls: &[Call], matches: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(matches)
        .unwrap_or_else(|| panic!("missing from {calls:?}"))
}

#[test]
fn the_command_becomes_the_caller_in_order_then_execs() {
    let mut fake = Fake::default();
    let (code, message) = run(&mut fake, &spec());
    let mut expected = vec![
        Call::ResetSignals,
        Call::ResetOomScore,
        Call::ReadOpenFilesLimit,
        Call::SetOpenFilesLimit {
            soft: 1024,
            hard: 4096,
        },
        Call::NewSession,
    ];
    expected.extend(becoming_the_caller());
    expected.extend([
        Call::Chdir(PathBuf::from("/home/caller")),
        Call::OnlyStdioOnExec,
        Call::SetDumpable(true),
        Call::InstallSocketFilter,
        Call::HandOverListener,
        Call::Exec(b"/bin/true".to_vec()),
    ]);
    assert_eq!(fake.calls, expected);
    // The fake's exec returns (ENOENT), as a real one does only when it failed.
    assert_eq!(
        (code, message.as_str()),
        (EXIT_NOT_FOUND, "/bin/true: command not found")
    );
}

/// The relations that keep the command from keeping or regaining a privilege, whatever else moves.
#[test]
fn no_privilege_outlives_the_step_that_needs_it() {
    for (uid, tty) in [(1000, false), (1000, true), (0, false)] {
        let mut fake = Fake::default();
        let spec = InitSpec { uid, tty, ..spec() };
        run(&mut fake, &spec);
        let calls = &fake.calls;
        let at = |call: Call| position(calls, |c| *c == call);
        let last_bounding = calls
            .iter()
            .rposition(|c| matches!(c, Call::DropFromBoundingSet(_)))
            .unwrap();
        // Dropping from the bounding set needs CAP_SETPCAP, which a non-root uid no longer has.
        assert!(last_bounding < at(Call::SetGroups(vec![1001, 27])));
        // setgroups and setresgid need CAP_SETGID: both go before the uid changes.
        assert!(at(Call::SetGroups(vec![1001, 27])) < at(Call::SetUid(uid)));
        assert!(at(Call::SetGid(1001)) < at(Call::SetUid(uid)));
        // A root caller keeps its capabilities through setresuid: they are cleared after it, effective
        // before permitted (which the effective set must stay within).
        let cleared =
            ["Ambient", "Inheritable", "Effective", "Permitted"].map(|set| at(clear(set)));
        assert!(cleared.iter().all(|&step| step > at(Call::SetUid(uid))));
        assert!(at(clear("Effective")) < at(clear("Permitted")));
        // The working directory is entered as the caller, so the caller's permissions apply.
        let chdir = at(Call::Chdir(PathBuf::from("/home/caller")));
        assert!(chdir > at(Call::SetUid(uid)));
        // The terminal is taken in the new session, before any privilege goes.
        if tty {
            assert!(at(Call::NewSession) < at(Call::TakeTerminal));
            assert!(
                at(Call::TakeTerminal)
                    < position(calls, |c| matches!(c, Call::DropFromBoundingSet(_)))
            );
        }
        // Exec comes last, after every privilege is gone.
        let exec = position(calls, |c| matches!(c, Call::Exec(_)));
        assert_eq!(exec, calls.len() - 1);
        assert!(cleared.iter().all(|&step| step < exec));
        assert!(at(Call::SetNoNewPrivs) < exec);
        assert!(at(Call::OnlyStdioOnExec) < exec);
        // The socket filter needs no_new_privs (the process has no CAP_SYS_ADMIN left), and comes last
        // so that nothing the set-up does goes through it; PID 1 holds its listener before exec.
        assert!(at(Call::SetNoNewPrivs) < at(Call::InstallSocketFilter));
        assert!(at(Call::SetDumpable(true)) < at(Call::HandOverListener));
        assert!(at(Call::InstallSocketFilter) < at(Call::HandOverListener));
        assert_eq!(at(Call::HandOverListener), exec - 1);
    }
}

/// PID 1 serves the socket filter as the caller and no more: every privilege dropped as the command drops
/// them, then out of the command's reach (non-dumpable), with its parent-death signal set again (changing
/// uid cleared it).
#[test]
fn pid1_becomes_the_caller_before_it_serves() {
    let mut fake = Fake::default();
    become_supervisor(&mut fake, &spec()).unwrap();
    let mut expected = becoming_the_caller();
    expected.extend([Call::SetDumpable(false), Call::SetParentDeathSignal]);
    assert_eq!(fake.calls, expected);
    for step in 0..expected.len() {
        let mut fake = Fake {
            fail_at: Some(step),
            ..Fake::default()
        };
        assert!(become_supervisor(&mut fake, &spec()).is_err());
        assert_eq!(fake.calls, expected[..=step], "failing step {step}");
    }
}

#[test]
fn every_capability_the_kernel_knows_leaves_the_bounding_set() {
    for known in [38, 41, 64] {
        let mut fake = Fake {
            known_capabilities: known,
            ..Fake::default()
        };
        run(&mut fake, &spec());
        let dropped: Vec<libc::c_int> = fake
            .calls
            .iter()
            .filter_map(|call| match call {
                Call::DropFromBoundingSet(cap) => Some(*cap),
                _ => None,
            })
            .collect();
        assert_eq!(dropped, (0..known).collect::<Vec<_>>());
    }
}

#[test]
fn the_soft_open_files_limit_never_exceeds_the_hard_one() {
    let mut fake = Fake {
        hard_open_files: 512,
        ..Fake::default()
    };
    run(&mut fake, &spec());
    assert!(fake.calls.contains(&Call::SetOpenFilesLimit {
        soft: 512,
        hard: 512
    }));
}

/// The message a failure of `call` gives, with the fake's EPERM.
fn failure_message(call: &Call) -> String {
    let what = match call {
        Call::ResetSignals => "restoring the signal mask".to_string(),
        Call::ResetOomScore => "resetting oom_score_adj".to_string(),
        Call::ReadOpenFilesLimit => "reading RLIMIT_NOFILE".to_string(),
        Call::SetOpenFilesLimit { .. } => "setting RLIMIT_NOFILE".to_string(),
        Call::NewSession => "setsid".to_string(),
        Call::TakeTerminal => "taking the terminal as controlling terminal".to_string(),
        Call::DropFromBoundingSet(cap) => {
            format!("dropping capability {cap} from the bounding set")
        }
        Call::SetGroups(_) => "setting supplementary groups".to_string(),
        Call::SetGid(gid) => format!("setting gid {gid}"),
        Call::SetUid(uid) => format!("setting uid {uid}"),
        Call::ClearCapabilities(set) => format!("clearing the {set} capability set"),
        Call::SetNoNewPrivs => "setting no_new_privs".to_string(),
        Call::SetDumpable(true) => "letting PID 1 take the socket filter".to_string(),
        Call::SetDumpable(false) => "making PID 1 non-dumpable".to_string(),
        Call::SetParentDeathSignal => "setting the parent-death signal".to_string(),
        Call::InstallSocketFilter => {
            "installing the socket filter (seccomp user notification, Linux \
                                      5.19 or newer; see `sandbox doctor`)"
                .to_string()
        }
        Call::HandOverListener => "handing the socket filter to PID 1".to_string(),
        Call::Chdir(dir) => format!("cannot enter the working directory {}", dir.display()),
        Call::OnlyStdioOnExec => "keeping the daemon's descriptors from the command".to_string(),
        Call::Exec(_) => unreachable!("exec reports its own failure"),
    };
    format!("{what}: {}", io::Error::from_raw_os_error(libc::EPERM))
}

#[test]
fn a_failure_at_any_step_stops_before_exec() {
    let spec = InitSpec {
        tty: true,
        ..spec()
    };
    let mut whole = Fake::default();
    run(&mut whole, &spec);
    let steps = &whole.calls[..whole.calls.len() - 1];
    assert!(steps.contains(&Call::TakeTerminal));
    for (step, call) in steps.iter().enumerate() {
        let mut fake = Fake {
            fail_at: Some(step),
            ..Fake::default()
        };
        let (code, message) = run(&mut fake, &spec);
        // Nothing after the failed step, exec least of all.
        assert_eq!(fake.calls, whole.calls[..=step], "failing {call:?}");
        assert_eq!(code, EXIT_NO_SANDBOX, "failing {call:?}");
        assert_eq!(message, failure_message(call));
    }
}

#[test]
fn the_command_is_looked_up_on_the_callers_path_and_permission_problems_win() {
    let spec = InitSpec {
        argv: vec![bytes("tool"), bytes("--flag")],
        env: vec![(bytes("PATH"), bytes("/opt/a::/opt/b"))],
        ..spec()
    };
    let mut fake = Fake {
        exec_errors: vec![(b"/opt/a/tool", Errno::EACCES)],
        ..Fake::default()
    };
    let (code, message) = run(&mut fake, &spec);
    let execs: Vec<&Call> = fake
        .calls
        .iter()
        .filter(|call| matches!(call, Call::Exec(_)))
        .collect();
    // An empty PATH entry is the working directory, as in a shell.
    assert_eq!(
        execs,
        [
            &Call::Exec(b"/opt/a/tool".to_vec()),
            &Call::Exec(b"./tool".to_vec()),
            &Call::Exec(b"/opt/b/tool".to_vec()),
        ]
    );
    assert_eq!(
        (code, message.as_str()),
        (EXIT_NOT_EXECUTABLE, "tool: permission denied")
    );

    // Without a PATH of the caller's, the default one; never the daemon's.
    let spec = InitSpec {
        env: Vec::new(),
        ..spec
    };
    let mut fake = Fake::default();
    let (code, message) = run(&mut fake, &spec);
    assert!(fake.calls.ends_with(&[
        Call::Exec(b"/usr/local/bin/tool".to_vec()),
        Call::Exec(b"/usr/bin/tool".to_vec()),
        Call::Exec(b"/bin/tool".to_vec()),
    ]));
    assert_eq!(
        (code, message.as_str()),
        (EXIT_NOT_FOUND, "tool: command not found")
    );
}
