//! Running code inside another network namespace. `setns` moves only the calling thread, and a thread
//! that fails to move back would leave whatever runs on it next in the wrong namespace; so a thread made
//! for the purpose enters the namespace, runs the code and ends, and no other thread (a tokio worker
//! least of all) ever changes namespace. Sockets opened there stay in that namespace for their whole
//! life, whichever thread uses them later.

use std::io;
use std::os::fd::BorrowedFd;
use std::thread;

use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread that entered the network namespace `netns`, and returns what `f` returned.
/// Errors are those of starting the thread and of entering the namespace; a panic in `f` goes on in the
/// caller. The caller waits for `f`: async code calls this on a blocking thread (`spawn_blocking`).
pub fn run_in<T: Send>(netns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    thread::scope(|scope| {
        let entered = thread::Builder::new().name("netns".into()).spawn_scoped(
            scope,
            move || -> io::Result<T> {
                setns(netns, CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            },
        )?;
        entered
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
