//! The process a notification is about: its descriptors (taken with pidfd_getfd, so the supervisor acts on
//! the very socket the call named, whatever the program's descriptor table says a moment later) and its
//! memory (read once with process_vm_readv, so the supervisor decides and acts on one copy, whatever the
//! program writes there a moment later). The kernel allows both to the supervisor because it runs as the
//! same user and is an ancestor of every process of the sandbox, unless the program is not dumpable:
//! then the keeper opens them (`helper`), and the supervisor reads the memory through /proc/TID/mem.

use std::cell::OnceCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;

use super::helper::{Ask, Directory, Helper};
use super::pidfd;

pub(super) struct Target {
    /// The calling thread, as the sandbox's PID namespace numbers it.
    pub(super) tid: libc::pid_t,
    pidfd: OwnedFd,
    /// Asked when the kernel refuses the supervisor (a non-dumpable program).
    helper: Option<Arc<Helper>>,
    /// /proc/TID/mem from the helper, once asked for.
    memory: OnceCell<OwnedFd>,
}

impl Target {
    /// The thread `tid` (kernel 6.9 has pidfds of threads; before, its process's, which share its
    /// descriptors unless it was made with clone without CLONE_FILES). Until the notification is checked
    /// valid after this, `tid` may be another process that reused the number.
    pub(super) fn open(tid: u32, helper: Option<Arc<Helper>>) -> Result<Target, Errno> {
        let tid = tid as libc::pid_t;
        let pidfd = match pidfd::open(tid, libc::PIDFD_THREAD) {
            Err(Errno::EINVAL) => pidfd::open(thread_group(tid)?, 0)?,
            other => other?,
        };
        Ok(Target {
            tid,
            pidfd,
            helper,
            memory: OnceCell::new(),
        })
    }

    /// What the helper opens for this thread, where the kernel refused the supervisor with `refused`.
    fn ask(&self, ask: Ask, refused: Errno) -> Result<OwnedFd, Errno> {
        match &self.helper {
            Some(helper) => helper.open(ask, self.tid as u32, Some(self.pidfd.as_fd())),
            None => Err(refused),
        }
    }

    /// /proc/TID/mem from the helper (asked once).
    fn memory(&self, refused: Errno) -> Result<&OwnedFd, Errno> {
        if let Some(memory) = self.memory.get() {
            return Ok(memory);
        }
        let memory = self.ask(Ask::Memory, refused)?;
        Ok(self.memory.get_or_init(|| memory))
    }

    /// A duplicate of the target's descriptor `fd` (the same open file).
    pub(super) fn fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        match pidfd::get_fd(self.pidfd.as_fd(), fd) {
            Err(Errno::EPERM) => self.ask(Ask::Socket(fd), Errno::EPERM),
            got => got,
        }
    }

    /// `len` bytes at `address`, or EFAULT as the kernel would have said.
    pub(super) fn read(&self, address: u64, len: usize) -> Result<Vec<u8>, Errno> {
        self.read_pieces(&[(address, len)])
    }

    /// The pieces `(address, len)`, one after the other, in one call.
    pub(super) fn read_pieces(&self, pieces: &[(u64, usize)]) -> Result<Vec<u8>, Errno> {
        let total: usize = pieces.iter().map(|&(_, len)| len).sum();
        let mut buffer = vec![0u8; total];
        if total == 0 {
            return Ok(buffer);
        }
        let remote: Vec<libc::iovec> = pieces
            .iter()
            .filter(|&&(_, len)| len > 0)
            .map(|&(address, len)| libc::iovec {
                iov_base: address as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // process_vm_readv takes at most IOV_MAX (1024) pieces a call.
        let mut done = 0;
        for chunk in remote.chunks(1024) {
            let want: usize = chunk.iter().map(|iov| iov.iov_len).sum();
            let local = libc::iovec {
                iov_base: buffer[done..].as_mut_ptr().cast(),
                iov_len: want,
            };
            // SAFETY: the local buffer has room for `want` bytes; remote addresses are only read by the
            // kernel, which checks them against the target's memory.
            let got = unsafe {
                libc::process_vm_readv(
                    self.tid,
                    &local,
                    1,
                    chunk.as_ptr(),
                    chunk.len() as libc::c_ulong,
                    0,
                )
            };
            if got < 0 {
                return match Errno::last() {
                    Errno::EPERM => self.read_through_memory(pieces, Errno::EPERM),
                    // ESRCH: gone, and the notification with it; EFAULT: what the call would have met.
                    Errno::ESRCH => Err(Errno::ESRCH),
                    _ => Err(Errno::EFAULT),
                };
            }
            if got as usize != want {
                return Err(Errno::EFAULT);
            }
            done += want;
        }
        Ok(buffer)
    }

    /// As `read_pieces`, through /proc/TID/mem from the helper.
    fn read_through_memory(
        &self,
        pieces: &[(u64, usize)],
        refused: Errno,
    ) -> Result<Vec<u8>, Errno> {
        let memory = self.memory(refused)?;
        let mut buffer = Vec::new();
        for &(address, len) in pieces {
            let start = buffer.len();
            buffer.resize(start + len, 0);
            let offset = i64::try_from(address).map_err(|_| Errno::EFAULT)?;
            let got = nix::sys::uio::pread(memory, &mut buffer[start..], offset)
                .map_err(|_| Errno::EFAULT)?;
            if got != len {
                return Err(Errno::EFAULT);
            }
        }
        Ok(buffer)
    }

    /// Writes `bytes` at `address` (sendmmsg's per-message lengths).
    pub(super) fn write(&self, address: u64, bytes: &[u8]) -> Result<(), Errno> {
        let local = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: the kernel only reads the local buffer and checks the remote range.
        let put = unsafe { libc::process_vm_writev(self.tid, &local, 1, &remote, 1, 0) };
        if put < 0 && Errno::last() == Errno::EPERM {
            let memory = self.memory(Errno::EPERM)?;
            let offset = i64::try_from(address).map_err(|_| Errno::EFAULT)?;
            let put = nix::sys::uio::pwrite(memory, bytes, offset).map_err(|_| Errno::EFAULT)?;
            return if put == bytes.len() {
                Ok(())
            } else {
                Err(Errno::EFAULT)
            };
        }
        if put as usize != bytes.len() {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    /// Sends `signal` as the kernel would have (SIGPIPE for a send on a closed stream).
    pub(super) fn signal(&self, signal: libc::c_int) {
        // SAFETY: integer arguments and a NULL siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            )
        };
    }

    /// The target's root or working directory, to resolve the paths it names as it would.
    pub(super) fn directory(&self, which: Directory) -> Result<OwnedFd, Errno> {
        match which.open(self.tid as u32) {
            // procfs refuses a non-dumpable process's links with EACCES.
            Err(errno @ (Errno::EACCES | Errno::EPERM)) => self.ask(Ask::Directory(which), errno),
            other => other,
        }
    }
}

/// The process of thread `tid`, from /proc (kernels without pidfds of threads).
fn thread_group(tid: libc::pid_t) -> Result<libc::pid_t, Errno> {
    let status =
        std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|error| io_errno(&error))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
        .ok_or(Errno::ESRCH)
}

pub(super) fn io_errno(error: &io::Error) -> Errno {
    error.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}
