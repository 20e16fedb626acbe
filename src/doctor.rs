//! `sandbox doctor`: checks that this host has what the daemon needs, by trying it — each kernel feature is
//! exercised in a throwaway network namespace, so the check changes nothing on the host — and says how to
//! fix whatever is missing.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use ipnet::{IpNet, Ipv4Net};
use std::path::Path;

use nix::sched::{unshare, CloneFlags};

use crate::kernel::marks::{MARK, ROUTE_TABLE, SOCKET_MARK};
use crate::kernel::netlink::{LinkSpec, LinkSpec6, Netlink};
use crate::kernel::nft::{self, RulesetParams};

struct Check {
    name: &'static str,
    result: Result<String, String>,
    fix: &'static str,
}

/// Prints one line per check and returns whether everything needed is there.
pub fn run() -> bool {
    let mut checks = vec![Check {
        name: "running as root",
        result: if nix::unistd::geteuid().is_root() {
            Ok("yes".into())
        } else {
            Err("no: the kernel checks below need root".into())
        },
        fix: "run `sudo sandbox doctor`",
    }];
    checks.push(Check {
        name: "nft tool",
        result: nft_version(),
        fix: "apt-get install nftables (Debian/Ubuntu) or dnf install nftables (Fedora/RHEL)",
    });
    checks.push(Check {
        name: "namespaces",
        result: namespaces(),
        fix: "a kernel with CONFIG_NAMESPACES, CONFIG_NET_NS, CONFIG_PID_NS, CONFIG_IPC_NS, CONFIG_UTS_NS",
    });
    checks.push(Check {
        name: "detached mounts",
        result: detached_mount(),
        fix: "Linux 5.2 or newer (fsopen/fsmount)",
    });
    checks.push(Check {
        name: "Unix socket confinement",
        result: crate::sandbox::unix_sockets::kernel_support(),
        fix: "Linux 5.19 or newer with CONFIG_SECCOMP_FILTER and CONFIG_UNIX_DIAG (modprobe unix_diag), \
              sysctl kernel.yama.ptrace_scope=1 or 0: \
              without them sandboxes do not start, or their connects fail (host Unix sockets stay closed)",
    });
    // Asked here, in the host's namespace: in the throwaway one even loopback is down.
    let ipv6 = ipv6();
    if nix::unistd::geteuid().is_root() {
        checks.extend(in_throwaway_netns(ipv6.is_ok()));
    }
    checks.push(Check {
        name: "IPv6",
        result: ipv6,
        fix:
            "optional: enable IPv6 (sysctl net.ipv6.conf.all.disable_ipv6=0) for IPv6 in sandboxes",
    });

    let mut ok = true;
    for check in &checks {
        match &check.result {
            Ok(detail) => println!("ok    {}: {detail}", check.name),
            Err(problem) => {
                // IPv6 is optional: sandboxes then get IPv4 only.
                let required = check.name != "IPv6";
                ok &= !required;
                println!(
                    "{}  {}: {problem}",
                    if required { "FAIL" } else { "warn" },
                    check.name
                );
                println!("      fix: {}", check.fix);
            }
        }
    }
    ok
}

fn nft_version() -> Result<String, String> {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        }
        Ok(output) => Err(format!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("nft not found: {error}")),
    }
}

fn namespaces() -> Result<String, String> {
    let missing: Vec<&str> = ["net", "mnt", "pid", "ipc", "uts"]
        .into_iter()
        .filter(|kind| !Path::new("/proc/self/ns").join(kind).exists())
        .collect();
    if missing.is_empty() {
        Ok("net, mnt, pid, ipc, uts".into())
    } else {
        Err(format!("missing: {}", missing.join(", ")))
    }
}

fn detached_mount() -> Result<String, String> {
    // SAFETY: fsopen with a valid C string; the descriptor is owned and closed once.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(format!("fsopen: {}", std::io::Error::last_os_error()));
    }
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok("fsopen works".into())
}

fn ipv6() -> Result<String, String> {
    if !Path::new("/proc/net/if_inet6").exists() {
        return Err("IPv6 is disabled in this kernel".into());
    }
    std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
        .map(|_| "available".to_string())
        .map_err(|error| format!("cannot bind [::1]: {error}"))
}

/// The checks that change kernel state, run in a network namespace that disappears with its thread.
fn in_throwaway_netns(ipv6: bool) -> Vec<Check> {
    let outcome = std::thread::spawn(move || -> Result<Vec<Check>, String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(runtime.block_on(kernel_checks(ipv6)))
    })
    .join();
    match outcome {
        Ok(Ok(checks)) => checks,
        Ok(Err(error)) => vec![Check {
            name: "network namespace",
            result: Err(error),
            fix: "a kernel with CONFIG_NET_NS",
        }],
        Err(_) => vec![Check {
            name: "network namespace",
            result: Err("the check crashed".into()),
            fix: "report this as a bug",
        }],
    }
}

fn families(ipv6: bool) -> &'static str {
    if ipv6 {
        "IPv4 and IPv6"
    } else {
        "IPv4 (IPv6 not checked: unavailable)"
    }
}

async fn kernel_checks(ipv6: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(Check {
        name: "nftables with tproxy",
        result: nft::install(RulesetParams {
            mark: MARK,
            socket_mark: SOCKET_MARK,
            tcp_port: 1,
            tls_port: 1,
            dns_port: 1,
            networks: vec![IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 233, 0, 0), 16).unwrap_or_default())],
        })
        .await
        .map(|()| "table inet sandbox with tproxy rules accepted".to_string())
        .map_err(|e| e.to_string()),
        fix: "nftables 0.9.3+ and a kernel with CONFIG_NFT_TPROXY, CONFIG_NFT_SOCKET, CONFIG_NFT_FIB_INET, CONFIG_NFT_REJECT_INET",
    });
    let netlink = match Netlink::connect() {
        Ok(netlink) => netlink,
        Err(error) => {
            checks.push(Check {
                name: "netlink",
                result: Err(error.to_string()),
                fix: "a kernel with CONFIG_NETLINK",
            });
            return checks;
        }
    };
    checks.push(Check {
        name: "policy routing",
        // The local routes go through loopback, as on the host.
        result: async {
            netlink.loopback_up().await?;
            netlink
                .install_policy_routing(MARK, ROUTE_TABLE, ipv6)
                .await
        }
        .await
        .map(|()| format!("fwmark rule and local route table, {}", families(ipv6)))
        .map_err(|e| e.to_string()),
        fix: "a kernel with CONFIG_IP_MULTIPLE_TABLES (and CONFIG_IPV6_MULTIPLE_TABLES)",
    });
    checks.push(Check {
        name: "veth",
        result: veth(&netlink, ipv6).await,
        fix: "a kernel with CONFIG_VETH",
    });
    checks
}

async fn veth(netlink: &Netlink, ipv6: bool) -> Result<String, String> {
    let peer = std::thread::spawn(|| -> Result<OwnedFd, String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the check crashed".to_string())??;
    let spec = LinkSpec {
        host_ifname: "sbxdoctor".into(),
        host_v4: Ipv4Addr::new(10, 233, 0, 1),
        sandbox_v4: Ipv4Addr::new(10, 233, 0, 2),
        prefix_v4: 30,
        v6: ipv6.then(|| LinkSpec6 {
            host: Ipv6Addr::new(0xfd00, 0x5ba, 0xd, 0, 0, 0, 0, 1),
            sandbox: Ipv6Addr::new(0xfd00, 0x5ba, 0xd, 0, 0, 0, 0, 2),
            prefix: 64,
        }),
    };
    netlink
        .create_sandbox_link(&spec, peer.as_fd())
        .await
        .map(|()| format!("veth pair into a new namespace, {}", families(ipv6)))
        .map_err(|e| e.to_string())
}
