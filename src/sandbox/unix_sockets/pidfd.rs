//! The calls that reach another process of the sandbox: pidfd_open, pidfd_getfd, and its links in the
//! sandbox's /proc. The supervisor makes them as the caller (`target`); the keeper, where the kernel
//! refuses the caller, as root (`helper`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// A pidfd of `pid` (with PIDFD_THREAD: of that thread), as the caller's PID namespace numbers it.
pub(super) fn open(pid: libc::pid_t, flags: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments; a returned descriptor is new and ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A duplicate of descriptor `fd` of the pidfd's process (the same open file).
pub(super) fn get_fd(pidfd: BorrowedFd<'_>, fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only; a returned descriptor is new and ours alone.
    let got = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            fd,
            0 as libc::c_uint,
        )
    };
    if got < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// /proc/TID/`name` of thread `tid`, in the caller's /proc (the sandbox's, in the sandbox).
pub(super) fn proc_open(tid: u32, name: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        format!("/proc/{tid}/{name}").as_str(),
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}
