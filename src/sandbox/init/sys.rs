//! The system calls by which the command's process becomes the caller (`run_command`), behind a trait so
//! that their order, and that a failure at any of them stops before exec, are unit-tested without root
//! (`tests.rs` records them). Each method is one call of the kernel's and says nothing of why: the order
//! and the error messages stay in `run_command`, the code under test. Used through generics only, so the
//! real path compiles to the direct calls it made before.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Uid};

pub(super) trait Sys {
    /// Puts back the signal mask the keeper had before it blocked the forwarded signals, then every
    /// signal's disposition to its default.
    fn reset_signals(&mut self, mask: &SigSet) -> io::Result<()>;
    /// Sets oom_score_adj back to 0.
    fn reset_oom_score(&mut self) -> io::Result<()>;
    /// The hard RLIMIT_NOFILE.
    fn open_files_hard_limit(&mut self) -> io::Result<u64>;
    fn set_open_files_limit(&mut self, soft: u64, hard: u64) -> io::Result<()>;
    /// setsid.
    fn new_session(&mut self) -> io::Result<()>;
    /// Makes stdin, a terminal, the controlling terminal of the new session.
    fn take_terminal(&mut self) -> io::Result<()>;
    /// Drops `cap` from the bounding set if it is there. False if this kernel knows no capability that
    /// high.
    fn drop_from_bounding_set(&mut self, cap: libc::c_int) -> io::Result<bool>;
    fn set_groups(&mut self, groups: &[Gid]) -> io::Result<()>;
    /// Real, effective and saved gid.
    fn set_gid(&mut self, gid: Gid) -> io::Result<()>;
    /// Real, effective and saved uid.
    fn set_uid(&mut self, uid: Uid) -> io::Result<()>;
    fn clear_capabilities(&mut self, set: caps::CapSet) -> io::Result<()>;
    fn set_no_new_privs(&mut self) -> io::Result<()>;
    /// prctl(PR_SET_DUMPABLE).
    fn set_dumpable(&mut self, dumpable: bool) -> io::Result<()>;
    /// SIGKILL when the parent (the keeper) dies.
    fn set_parent_death_signal(&mut self) -> io::Result<()>;
    /// Installs the socket filter (`unix_sockets::filter`) and returns its listener.
    fn install_socket_filter(&mut self) -> io::Result<OwnedFd>;
    /// Gives the listener to PID 1 and waits until PID 1 holds it.
    fn hand_over_listener(&mut self, listener: OwnedFd) -> io::Result<()>;
    fn chdir(&mut self, dir: &Path) -> io::Result<()>;
    /// Marks every descriptor but stdin, stdout and stderr close-on-exec.
    fn only_stdio_on_exec(&mut self) -> io::Result<()>;
    /// execve. Returns only if it failed.
    fn exec(&mut self, path: &CStr, argv: &[CString], envp: &[CString]) -> Errno;
}

/// The kernel's. `handover`: the command's ends of the pipes to PID 1, which takes the listener.
pub(super) struct Linux {
    pub(super) handover: Option<Handover>,
}

/// The command tells PID 1 the listener's number on `to_pid1`; PID 1 answers on `from_pid1` once it has
/// taken it: `b"k"`, or `b"x"` if it could not.
pub(super) struct Handover {
    pub(super) to_pid1: OwnedFd,
    pub(super) from_pid1: OwnedFd,
}

impl Sys for Linux {
    fn reset_signals(&mut self, mask: &SigSet) -> io::Result<()> {
        mask.thread_set_mask()?;
        reset_signal_dispositions();
        Ok(())
    }

    fn reset_oom_score(&mut self) -> io::Result<()> {
        std::fs::write("/proc/self/oom_score_adj", b"0")
    }

    fn open_files_hard_limit(&mut self) -> io::Result<u64> {
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
        Ok(hard)
    }

    fn set_open_files_limit(&mut self, soft: u64, hard: u64) -> io::Result<()> {
        Ok(nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            soft,
            hard,
        )?)
    }

    fn new_session(&mut self) -> io::Result<()> {
        nix::unistd::setsid()?;
        Ok(())
    }

    fn take_terminal(&mut self) -> io::Result<()> {
        // SAFETY: plain ioctl on our own stdin; 0 means "do not steal it from another session".
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn drop_from_bounding_set(&mut self, cap: libc::c_int) -> io::Result<bool> {
        // SAFETY: prctl with integer arguments only.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if present < 0 {
            return Ok(false);
        }
        // SAFETY: as above.
        if present == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }

    fn set_groups(&mut self, groups: &[Gid]) -> io::Result<()> {
        Ok(nix::unistd::setgroups(groups)?)
    }

    fn set_gid(&mut self, gid: Gid) -> io::Result<()> {
        Ok(nix::unistd::setresgid(gid, gid, gid)?)
    }

    fn set_uid(&mut self, uid: Uid) -> io::Result<()> {
        Ok(nix::unistd::setresuid(uid, uid, uid)?)
    }

    fn clear_capabilities(&mut self, set: caps::CapSet) -> io::Result<()> {
        caps::clear(None, set).map_err(io::Error::other)
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_no_new_privs()?)
    }

    fn set_dumpable(&mut self, dumpable: bool) -> io::Result<()> {
        Ok(nix::sys::prctl::set_dumpable(dumpable)?)
    }

    fn set_parent_death_signal(&mut self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_pdeathsig(
            nix::sys::signal::Signal::SIGKILL,
        )?)
    }

    fn install_socket_filter(&mut self) -> io::Result<OwnedFd> {
        crate::sandbox::unix_sockets::filter::install()
    }

    fn hand_over_listener(&mut self, listener: OwnedFd) -> io::Result<()> {
        let handover = self
            .handover
            .take()
            .ok_or_else(|| io::Error::other("no way to PID 1"))?;
        std::fs::File::from(handover.to_pid1).write_all(&listener.as_raw_fd().to_ne_bytes())?;
        let mut answer = [0u8; 1];
        std::fs::File::from(handover.from_pid1).read_exact(&mut answer)?;
        if answer != *b"k" {
            return Err(io::Error::other("PID 1 could not take it"));
        }
        Ok(())
    }

    fn chdir(&mut self, dir: &Path) -> io::Result<()> {
        Ok(nix::unistd::chdir(dir)?)
    }

    fn only_stdio_on_exec(&mut self) -> io::Result<()> {
        // SAFETY: a system call on descriptor numbers only; it changes no memory.
        let marked =
            unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
        if marked == 0 {
            return Ok(());
        }
        // Kernels before 5.11 know close_range without this flag: mark them one by one.
        let open: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in open {
            // SAFETY: as above; a descriptor closed since the listing gives EBADF, which is ignored.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    }

    fn exec(&mut self, path: &CStr, argv: &[CString], envp: &[CString]) -> Errno {
        nix::unistd::execve(path, argv, envp).unwrap_err()
    }
}

/// Ignored signals survive exec, and the Rust runtime ignores SIGPIPE: without this, `yes | head` would
/// never end inside a sandbox. Every catchable signal goes back to its default — through the raw system
/// call, because libc refuses to touch the signals it reserves for itself (32, 33), which an ignoring
/// parent may still have passed down.
fn reset_signal_dispositions() {
    /// The kernel's `struct sigaction` (not libc's).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: a valid kernel sigaction for SIG_DFL; no old action is written back.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    &default as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8,
                )
            };
        }
    }
}
