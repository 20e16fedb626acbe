//! Helpers of the side-door tests (`tests/side_doors.rs`): host Unix services a sandbox must not reach
//! (or may, when listed) that record who reached them, a 32-bit program that tries, and the nftables
//! table as content to compare.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use super::{nft_json, run_tool, tool, TestNet};

/// Who reached a host service: the peer's uid and pid as the kernel reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
}

/// A host Unix socket (stream or datagram) served from the test process until dropped. Streams get a
/// line "hello" on connect.
pub struct HostUnixSocket {
    pub path: PathBuf,
    reached: Arc<Mutex<Vec<Peer>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostUnixSocket {
    /// A stream socket at `path` with `mode`, owned by `owner` (uid, gid) or root.
    pub fn stream(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> HostUnixSocket {
        let listener =
            UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        listener.set_nonblocking(true).unwrap();
        Self::serve(path, mode, owner, move |reached, stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let cred = nix::sys::socket::getsockopt(
                            &stream.as_fd(),
                            nix::sys::socket::sockopt::PeerCredentials,
                        )
                        .unwrap();
                        reached.lock().unwrap().push(Peer {
                            uid: cred.uid(),
                            pid: cred.pid(),
                        });
                        let _ = stream.write_all(b"hello\n");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    /// A datagram socket at `path`, 0777, owned by root.
    pub fn datagram(path: &Path) -> HostUnixSocket {
        let socket =
            UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        socket.set_nonblocking(true).unwrap();
        Self::serve(path, 0o777, None, move |reached, stop| {
            let mut buffer = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv(&mut buffer) {
                    Ok(_) => reached.lock().unwrap().push(Peer { uid: 0, pid: 0 }),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    fn serve(
        path: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
        serve: impl FnOnce(Arc<Mutex<Vec<Peer>>>, Arc<AtomicBool>) + Send + 'static,
    ) -> HostUnixSocket {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(path, Some(uid.into()), Some(gid.into())).unwrap();
        }
        let reached = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reached, stop) = (reached.clone(), stop.clone());
            thread::spawn(move || serve(reached, stop))
        };
        HostUnixSocket {
            path: path.to_owned(),
            reached,
            stop,
            thread: Some(thread),
        }
    }

    /// Everyone who reached it so far.
    pub fn reached(&self) -> Vec<Peer> {
        self.reached.lock().unwrap().clone()
    }
}

impl Drop for HostUnixSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// An abstract Unix socket of netns `ns` (the test's host), listening until the returned value drops.
pub fn abstract_listener(ns: &str, name: &str) -> UnixListener {
    let name = name.to_owned();
    super::in_netns(ns, move || {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixListener::bind_addr(&address).unwrap()
    })
}

/// A 32-bit (i386) program, built with `gcc -m32` without a C library: it connects a Unix stream socket
/// to argv[1] with the direct connect call and with socketcall, and exits with bit 0 set if the first
/// connected, bit 1 if the second did, bit 2 if it could not make a socket. None without gcc.
pub fn i386_connect_program(dir: &Path) -> Option<PathBuf> {
    const SOURCE: &str = r#"
static long sys(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}
struct sockaddr_un { unsigned short family; char path[108]; };
__attribute__((used)) int main_c(int argc, char **argv) {
    struct sockaddr_un address = { 1, {0} };
    int len = 0, status = 0;
    if (argc < 2) return 8;
    while (argv[1][len] && len < 107) { address.path[len] = argv[1][len]; len++; }
    long s = sys(359, 1, 1, 0); /* socket(AF_UNIX, SOCK_STREAM, 0) */
    if (s < 0) return 4;
    if (sys(362, s, (long)&address, 2 + len + 1) == 0) status |= 1; /* connect */
    long t = sys(359, 1, 1, 0);
    long args[3] = { t, (long)&address, 2 + len + 1 };
    if (t < 0) return status | 4;
    if (sys(102, 3, (long)args, 0) == 0) status |= 2; /* socketcall(SYS_CONNECT) */
    return status;
}
__asm__(".globl _start\n_start:\n xorl %ebp,%ebp\n movl (%esp),%eax\n leal 4(%esp),%ecx\n"
        " andl $-16,%esp\n subl $8,%esp\n pushl %ecx\n pushl %eax\n call main_c\n"
        " movl %eax,%ebx\n movl $1,%eax\n int $0x80\n");
"#;
    let gcc = ["/usr/bin/gcc", "/usr/bin/cc"]
        .into_iter()
        .find(|path| Path::new(path).exists())?;
    let source = dir.join("connect32.c");
    let program = dir.join("connect32");
    fs::write(&source, SOURCE).unwrap();
    let built = Command::new(gcc)
        .args([
            "-m32",
            "-O1",
            "-nostdlib",
            "-static",
            "-ffreestanding",
            "-fno-pie",
            "-no-pie",
            "-o",
        ])
        .arg(&program)
        .arg(&source)
        .output()
        .ok()?;
    if !built.status.success() {
        eprintln!(
            "gcc -m32 failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        return None;
    }
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    Some(program)
}

/// The table `inet sandbox` in H as nft lists it, without handles (which change with every install):
/// what a restored table must equal.
pub fn table_content(net: &TestNet) -> Option<Value> {
    let mut table = nft_json(&net.h, &["list", "table", "inet", "sandbox"])?;
    let items = table["nftables"].as_array_mut()?;
    items.retain(|item| item.get("metainfo").is_none());
    for item in items.iter_mut() {
        if let Some(object) = item.as_object_mut().and_then(|o| o.values_mut().next()) {
            if let Some(fields) = object.as_object_mut() {
                fields.remove("handle");
            }
        }
    }
    Some(table)
}

/// Runs `nft ARGS` in H.
pub fn nft(net: &TestNet, args: &[&str]) {
    let nft = tool("nft");
    let mut all = vec![
        "netns",
        "exec",
        net.h.as_str(),
        nft.to_str().unwrap_or("nft"),
    ];
    all.extend_from_slice(args);
    run_tool("ip", &all);
}

/// The handle of the rule of chain prerouting whose JSON contains `needle`.
pub fn rule_handle(net: &TestNet, needle: &str) -> Option<u64> {
    let table = nft_json(&net.h, &["-a", "list", "table", "inet", "sandbox"])?;
    table["nftables"].as_array()?.iter().find_map(|item| {
        let rule = item.get("rule")?;
        rule.to_string()
            .contains(needle)
            .then(|| rule["handle"].as_u64())?
    })
}
