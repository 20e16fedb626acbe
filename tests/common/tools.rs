//! What every test needs around its network: whether it may run at all (root, the tools, the binary
//! under test; CI=true turns a skip into a failure), system tools run as root with their output
//! checked, polling for effects that come later, unique names and temporary directories.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The binary under test. THE one line to change when these tests move into the main crate:
/// `Some(PathBuf::from(env!("CARGO_BIN_EXE_sandbox")))`.
fn binary_under_test() -> Option<PathBuf> {
    Some(PathBuf::from(env!("CARGO_BIN_EXE_sandbox")))
}

/// PATH for everything the tests run: independent of the caller's PATH, and readable by the test user.
pub const STD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bounded wait for asynchronous effects (teardown, audit lines): generous, it only ends a failing test.
pub const SETTLE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------------
// Preconditions

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True (after saying why) when this test must be skipped: not root, a tool or the binary missing.
/// With CI=true it fails instead.
pub fn skip_unless_privileged() -> bool {
    skip_if(missing_requirements(true))
}

/// [`skip_unless_privileged`], and these tools too: names looked up in [`STD_PATH`], or absolute paths.
pub fn skip_unless_privileged_with(tools: &[&str]) -> bool {
    let mut missing = missing_requirements(true);
    missing.extend(tools.iter().filter_map(|t| {
        if t.starts_with('/') {
            (!Path::new(t).is_file())
                .then(|| format!("{t} does not exist (scripts/test installs it)"))
        } else {
            find_tool(t)
                .is_none()
                .then(|| format!("`{t}` not found in {STD_PATH} (scripts/test installs it)"))
        }
    }));
    skip_if(missing)
}

/// Like [`skip_unless_privileged`] for tests that need only the binary.
pub fn skip_without_binary() -> bool {
    skip_if(missing_requirements(false))
}

fn missing_requirements(privileged: bool) -> Vec<String> {
    let mut missing = Vec::new();
    match binary_under_test() {
        None => missing.push("the binary under test is not set (SANDBOX_BIN)".to_string()),
        Some(p) if !p.is_file() => missing.push(format!("{} does not exist", p.display())),
        Some(_) => {}
    }
    if privileged {
        if !nix::unistd::geteuid().is_root() {
            missing.push("not root".to_string());
        }
        for t in [
            "ip", "nft", "curl", "python3", "getent", "sh", "bash", "id", "useradd", "groupadd",
            "usermod",
        ] {
            if find_tool(t).is_none() {
                missing.push(format!("`{t}` not found in {STD_PATH}"));
            }
        }
    }
    missing
}

fn skip_if(missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return false;
    }
    let test = thread::current().name().unwrap_or("?").to_string();
    let why = missing.join("; ");
    if ci() {
        panic!("{test}: cannot run with CI=true: {why}");
    }
    // Straight to fd 2: the test runner's capture hides println!/eprintln! of passing tests.
    let _ = writeln!(io::stderr(), "SKIP {test}: {why}");
    true
}

fn find_tool(name: &str) -> Option<PathBuf> {
    STD_PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Absolute path of a system tool (the tests' own PATH may point at per-user shims).
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// The binary under test, at a path the test user can execute (a private copy when the original's
/// directories are closed to others, e.g. a checkout under /root).
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let orig = binary_under_test().expect("binary under test not set");
        if others_can_execute(&orig) {
            return orig;
        }
        let dir = bin_copy_dir();
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("sandbox");
        fs::copy(&orig, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: registers a plain extern "C" function; it runs once when the test process exits.
        unsafe { libc::atexit(remove_bin_copy) };
        copy
    })
}

fn bin_copy_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/sbx-e2e-bin-{}", std::process::id()))
}

extern "C" fn remove_bin_copy() {
    let _ = fs::remove_dir_all(bin_copy_dir());
}

fn others_can_execute(path: &Path) -> bool {
    let Ok(real) = fs::canonicalize(path) else {
        return false;
    };
    real.ancestors()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0))
}

// ---------------------------------------------------------------------------------------------------
// Running tools (as root, from the test process)

/// Runs a tool and returns its stdout; panics with its stderr when it fails.
pub fn run_tool<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = try_tool(program, args);
    assert!(
        out.status.success(),
        "{program} {:?} failed: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn try_tool<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Output {
    Command::new(tool(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `ip -n NS ARGS...`, panicking on failure.
pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_tool("ip", &all)
}

/// `ip -j -n NS ARGS...` parsed; empty output is an empty list.
pub fn ip_json(ns: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-j", "-n", ns];
    all.extend_from_slice(args);
    let text = run_tool("ip", &all);
    if text.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(&text) {
        Ok(Value::Array(v)) => v,
        other => panic!("ip {all:?}: unexpected JSON {other:?} from {text:?}"),
    }
}

/// `nft -j ARGS...` inside netns NS; None when nft fails (e.g. the table does not exist).
pub fn nft_json(ns: &str, args: &[&str]) -> Option<Value> {
    let nft = tool("nft");
    let mut all: Vec<&OsStr> = vec!["netns".as_ref(), "exec".as_ref(), ns.as_ref(), nft.as_ref()];
    all.push("-j".as_ref());
    all.extend(args.iter().map(OsStr::new));
    let out = try_tool("ip", &all);
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("nft -j output is JSON"))
}

pub fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit code of a client; a client killed by a signal is itself a failure.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("client died of a signal: {}", describe(o)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code `want`, showing the whole output otherwise.
pub fn assert_code(o: &Output, want: i32) {
    assert_eq!(code(o), want, "unexpected exit code: {}", describe(o));
}

/// The JSON lines of a log another process is writing (the daemon's audit log, a test server's log);
/// a last line not yet complete is left out. An absent file has none.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {line:?}: {e}", path.display()))
        })
        .collect()
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------
// Names and temporary directories

/// pid + counter + time: unique across parallel test threads and across test processes.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}-{n:x}-{:x}", std::process::id(), nanos >> 10)
}

/// FNV-1a of `s`: spreads test addresses and sleep arguments over their range, the same for the same
/// name.
pub(super) fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str, mode: u32) -> TempDir {
        let path = std::env::temp_dir().join(format!("sbx-e2e-{tag}-{}", unique_suffix()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
