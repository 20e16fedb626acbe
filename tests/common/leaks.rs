//! What a test leaves behind, and the checks that nothing is: the daemon's kernel objects in H (`sbx*`
//! links, the elements of its nft sets, its table, fwmark rules and routes), and processes, found by
//! the test's run tag or by their exact argv. Also the process tree shown when a daemon test fails.

use std::fs;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use super::clients::RUN_TAG_VAR;
use super::net::TestNet;
use super::tools::{
    describe, fnv, ip_json, nft_json, stderr, try_tool, unique_suffix, wait_for, SETTLE,
};

/// The daemon's fwmark and route table (`sandbox::kernel::marks`, 0x5ba = 1466): they tell its policy
/// rules and routes from any others in H.
pub const FWMARK: u64 = 0x5ba;
pub const ROUTE_TABLE: &str = "1466";

impl TestNet {
    pub fn sbx_links(&self) -> Vec<String> {
        ip_json(&self.h, &["link", "show"])
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("sbx"))
            .map(String::from)
            .collect()
    }

    /// `nft -j list table inet sandbox` in H, None when the table does not exist.
    pub fn sandbox_table(&self) -> Option<Value> {
        nft_json(&self.h, &["list", "table", "inet", "sandbox"])
    }

    /// Element counts of the sets `ifaces`, `src4`, `src6`; Err when the table or a set is missing.
    pub fn set_elements(&self) -> Result<Vec<(String, usize)>, String> {
        let table = self
            .sandbox_table()
            .ok_or("table inet sandbox does not exist")?;
        let items = table["nftables"].as_array().cloned().unwrap_or_default();
        ["ifaces", "src4", "src6"]
            .iter()
            .map(|name| {
                let set = items
                    .iter()
                    .find(|i| i["set"]["name"] == *name)
                    .ok_or(format!("set {name} missing in table inet sandbox"))?;
                let n = set["set"]["elem"].as_array().map_or(0, Vec::len);
                Ok((name.to_string(), n))
            })
            .collect()
    }

    /// `ip rule` entries (v4 and v6) that use the sandbox's fwmark or route table.
    pub fn mark_rules(&self) -> Vec<Value> {
        let mut rules = ip_json(&self.h, &["rule", "show"]);
        rules.extend(ip_json(&self.h, &["-6", "rule", "show"]));
        rules
            .into_iter()
            .filter(|r| {
                let mark = r["fwmark"]
                    .as_str()
                    .and_then(|m| u64::from_str_radix(m.trim_start_matches("0x"), 16).ok());
                mark == Some(FWMARK) || r["table"] == ROUTE_TABLE
            })
            .collect()
    }

    /// Routes (v4 and v6) in the sandbox's route table.
    pub fn table_routes(&self) -> Vec<Value> {
        ["-4", "-6"]
            .iter()
            .flat_map(|family| {
                let args = [
                    "-j",
                    "-n",
                    &self.h,
                    family,
                    "route",
                    "show",
                    "table",
                    ROUTE_TABLE,
                ];
                let out = try_tool("ip", &args);
                // A table that was never used or was emptied does not exist for the kernel.
                if stderr(&out).contains("table does not exist") {
                    return Vec::new();
                }
                assert!(out.status.success(), "ip {args:?}: {}", describe(&out));
                match serde_json::from_slice(&out.stdout) {
                    Ok(Value::Array(v)) => v,
                    other => panic!("ip {args:?}: unexpected JSON {other:?}"),
                }
            })
            .collect()
    }

    /// What is left of sandboxes while the daemon runs (empty when clean).
    fn sandbox_leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .sbx_links()
            .into_iter()
            .map(|l| format!("link {l}"))
            .collect();
        match self.set_elements() {
            Err(e) => left.push(e),
            Ok(sets) => left.extend(
                sets.into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, n)| format!("{n} element(s) in set {s}")),
            ),
        }
        left
    }

    /// While the daemon runs and no sandbox does: no `sbx*` link in H, the sets are empty (and exist).
    /// Waits up to [`SETTLE`] for teardown that finishes after the client returned.
    pub fn assert_no_sandbox_objects(&self) {
        let mut last = Vec::new();
        let clean = wait_for(SETTLE, || {
            last = self.sandbox_leftovers();
            last.is_empty().then_some(())
        });
        assert!(clean.is_some(), "sandbox objects left behind: {last:?}");
    }

    /// While a sandbox runs: its link and its set elements exist (proves the leak checks can see them).
    pub fn assert_sandbox_objects_present(&self) {
        assert!(
            !self.sbx_links().is_empty(),
            "no sbx link in H while a sandbox runs"
        );
        let sets = self.set_elements().unwrap_or_else(|e| panic!("{e}"));
        for (name, n) in sets {
            assert!(n > 0, "set {name} is empty while a sandbox runs");
        }
    }

    /// After the daemon stopped: no table, no fwmark rule, no route in its table, no `sbx*` link.
    pub fn assert_no_daemon_objects(&self) {
        let mut last = Vec::new();
        let clean = wait_for(SETTLE, || {
            last.clear();
            if self.sandbox_table().is_some() {
                last.push("table inet sandbox".to_string());
            }
            last.extend(self.mark_rules().iter().map(|r| format!("rule {r}")));
            last.extend(self.table_routes().iter().map(|r| format!("route {r}")));
            last.extend(self.sbx_links().iter().map(|l| format!("link {l}")));
            last.is_empty().then_some(())
        });
        assert!(clean.is_some(), "left behind by the daemon: {last:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Processes

fn read_proc(pid: i32, file: &str) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/{file}")).ok()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose environment carries this test's run tag (clients and what runs in their sandboxes).
pub(super) fn tagged_processes(run_tag: &str) -> Vec<i32> {
    let needle = format!("{RUN_TAG_VAR}={run_tag}");
    all_pids()
        .into_iter()
        .filter(|&pid| {
            read_proc(pid, "environ")
                .is_some_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Pids of processes owned by `uid` whose argv is exactly `argv`.
pub fn processes_with_argv(uid: u32, argv: &[&str]) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let Some(cmdline) = read_proc(pid, "cmdline") else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .strip_suffix(&[0])
                .unwrap_or(&cmdline)
                .split(|&b| b == 0)
                .collect();
            let same =
                args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes());
            same && proc_uid(pid) == Some(uid)
        })
        .collect()
}

fn proc_uid(pid: i32) -> Option<u32> {
    let status = String::from_utf8(read_proc(pid, "status")?).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until no process of `uid` runs exactly `argv`; panics naming the survivors otherwise.
pub fn assert_no_process(uid: u32, argv: &[&str]) {
    let gone = wait_for(SETTLE, || {
        processes_with_argv(uid, argv).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "still running {argv:?}: pids {:?}",
        processes_with_argv(uid, argv)
    );
}

/// A unique `sleep` argument, so a test can find exactly its own sleeping process.
pub fn unique_sleep() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!(
        "{}.{}{n}",
        1000 + std::process::id() % 9000,
        fnv(&unique_suffix()) % 1000
    )
}

/// `pid` and its descendants with state, wait channel and argv: shows where a stuck sandbox hangs.
pub fn process_tree(pid: i32) -> String {
    let parent_of = |p: i32| -> Option<i32> {
        let stat = String::from_utf8(read_proc(p, "stat")?).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let pids = all_pids();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(pids.iter().copied().filter(|&c| parent_of(c) == Some(p)));
        i += 1;
    }
    tree.iter()
        .map(|&p| {
            let text =
                |f| String::from_utf8_lossy(&read_proc(p, f).unwrap_or_default()).into_owned();
            let state = text("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or_default()
                .to_string();
            format!(
                "{p} ppid={:?} {state} wchan={} argv={:?}\n",
                parent_of(p),
                text("wchan"),
                text("cmdline").replace('\0', " ")
            )
        })
        .collect()
}
