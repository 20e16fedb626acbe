//! Helpers for the tests that need root: skipping loudly, and throwaway network namespaces that
//! vanish (with every link, route and nft table in them) when their last thread or fd goes, so
//! cleanup happens even when a test panics.

use std::fs::File;
use std::future::Future;
use std::os::fd::OwnedFd;

use nix::sched::{unshare, CloneFlags};

/// False (after saying so) when the test must be skipped; panics instead when CI=true.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root, and CI=true does not allow skipping it"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Runs `f` on a current-thread runtime on a new thread in a new network namespace: netlink
/// sockets opened there and processes spawned from there (`nft`) belong to that namespace.
pub(crate) fn in_new_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let result = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A new network namespace that lives as long as the returned fd.
pub(crate) fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        OwnedFd::from(File::open("/proc/thread-self/ns/net").unwrap())
    })
    .join()
    .unwrap()
}
