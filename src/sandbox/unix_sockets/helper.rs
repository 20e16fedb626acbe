//! What the supervisor may not open itself: the sockets, memory and directories of a program the kernel
//! made non-dumpable (an executable the caller may run but not read). The supervisor runs as the caller
//! and holds no capability, so the kernel refuses it those; the sandbox's keeper (root, outside the
//! sandbox's PID namespace, out of the command's reach) opens them and hands the descriptors over.
//!
//! The keeper answers only for processes of the sandbox: it finds a thread by its number in the sandbox's
//! own /proc, where no other process has one, and takes a socket only through a pidfd whose process is
//! in the sandbox's PID namespace. It opens nothing else, and the supervisor still decides and acts as
//! the caller with what it was given.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::pidfd;

/// `PIDFD_GET_PID_NAMESPACE` (linux/pidfd.h, Linux 6.11): the PID namespace of a pidfd's process.
const PIDFD_GET_PID_NAMESPACE: libc::c_ulong = 0xff05;

/// What the supervisor asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// Descriptor `n` of the pidfd's process (sent with the request).
    Socket(i32),
    /// /proc/TID/mem, read and written with pread and pwrite.
    Memory,
    /// /proc/TID/cwd or /proc/TID/root (O_PATH).
    Directory(Directory),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Directory {
    Cwd,
    Root,
}

impl Directory {
    /// /proc/TID/cwd or /proc/TID/root, O_PATH.
    pub(super) fn open(self, tid: u32) -> Result<OwnedFd, Errno> {
        let name = match self {
            Directory::Cwd => "cwd",
            Directory::Root => "root",
        };
        pidfd::proc_open(tid, name, OFlag::O_PATH | OFlag::O_DIRECTORY)
    }
}

/// A request: kind (1 byte), thread number, descriptor number.
const REQUEST: usize = 9;

impl Ask {
    fn encode(self, tid: u32) -> [u8; REQUEST] {
        let (kind, n) = match self {
            Ask::Socket(n) => (0u8, n),
            Ask::Memory => (1, 0),
            Ask::Directory(Directory::Cwd) => (2, 0),
            Ask::Directory(Directory::Root) => (3, 0),
        };
        let mut out = [0u8; REQUEST];
        out[0] = kind;
        out[1..5].copy_from_slice(&tid.to_ne_bytes());
        out[5..9].copy_from_slice(&n.to_ne_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<(Ask, u32)> {
        let bytes: &[u8; REQUEST] = bytes.try_into().ok()?;
        let tid = u32::from_ne_bytes(bytes[1..5].try_into().ok()?);
        let n = i32::from_ne_bytes(bytes[5..9].try_into().ok()?);
        let ask = match bytes[0] {
            0 => Ask::Socket(n),
            1 => Ask::Memory,
            2 => Ask::Directory(Directory::Cwd),
            3 => Ask::Directory(Directory::Root),
            _ => return None,
        };
        Some((ask, tid))
    }
}

/// The supervisor's end: one request and its answer at a time.
pub struct Helper {
    socket: Mutex<OwnedFd>,
}

impl Helper {
    pub fn new(socket: OwnedFd) -> Helper {
        Helper {
            socket: Mutex::new(socket),
        }
    }

    /// What `ask` names for thread `tid` (`pidfd`: its process, for a socket).
    pub(super) fn open(
        &self,
        ask: Ask,
        tid: u32,
        pidfd: Option<BorrowedFd<'_>>,
    ) -> Result<OwnedFd, Errno> {
        let socket = self.socket.lock().map_err(|_| Errno::EIO)?;
        send(socket.as_fd(), &ask.encode(tid), pidfd, MsgFlags::empty())?;
        let (errno, fd) = receive(socket.as_fd())?;
        match (errno, fd) {
            (0, Some(fd)) => Ok(fd),
            (0, None) => Err(Errno::EIO),
            (errno, _) => Err(Errno::from_raw(errno)),
        }
    }
}

/// One message into `buffer` (its length), and the first descriptor that came with it (others are
/// closed).
fn receive_raw(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
) -> Result<(usize, Option<OwnedFd>), Errno> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for raw in fds {
                // SAFETY: the kernel installed this descriptor for us alone.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    Ok((message.bytes, fd))
}

/// An answer: an errno (0: done) and the descriptor opened. A call interrupted is made again: the answer
/// left unread would be taken for the next request's.
fn receive(socket: BorrowedFd<'_>) -> Result<(i32, Option<OwnedFd>), Errno> {
    let mut answer = [0u8; 4];
    let (len, fd) = loop {
        match receive_raw(socket, &mut answer) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    if len != 4 {
        return Err(Errno::EIO);
    }
    Ok((i32::from_ne_bytes(answer), fd))
}

/// The keeper's end: answers one request (the keeper polls `socket` among its other work). False once
/// the supervisor's end is closed or unusable: nothing more will come. `sandbox_pid_ns` is the inode of
/// the sandbox's PID namespace; `/proc` is the sandbox's own.
pub fn answer_one(socket: BorrowedFd<'_>, sandbox_pid_ns: u64) -> bool {
    let mut request = [0u8; REQUEST + 1];
    let (len, pidfd) = match receive_raw(socket, &mut request) {
        Ok((0, _)) => return false,
        Ok(got) => got,
        Err(Errno::EINTR | Errno::EAGAIN) => return true,
        Err(_) => return false,
    };
    let answer = match Ask::decode(&request[..len]) {
        Some((ask, tid)) => answer(ask, tid, pidfd.as_ref(), sandbox_pid_ns),
        None => Err(Errno::EINVAL),
    };
    let (errno, fd) = match answer {
        Ok(fd) => (0, Some(fd)),
        Err(errno) => (errno as i32, None),
    };
    send(
        socket,
        &errno.to_ne_bytes(),
        fd.as_ref().map(|fd| fd.as_fd()),
        MsgFlags::MSG_DONTWAIT,
    )
    .is_ok()
}

/// One message: `bytes`, and `fd` with it.
fn send(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
    flags: MsgFlags,
) -> Result<usize, Errno> {
    let raw = fd.map(|fd| [fd.as_raw_fd()]);
    let rights: Vec<ControlMessage> = raw
        .as_ref()
        .map(|fds| ControlMessage::ScmRights(fds))
        .into_iter()
        .collect();
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &rights,
        flags | MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

fn answer(
    ask: Ask,
    tid: u32,
    pidfd: Option<&OwnedFd>,
    sandbox_pid_ns: u64,
) -> Result<OwnedFd, Errno> {
    match ask {
        Ask::Socket(n) => {
            let pidfd = pidfd.ok_or(Errno::EINVAL)?;
            if pid_namespace(pidfd.as_fd())? != sandbox_pid_ns {
                return Err(Errno::EPERM);
            }
            pidfd::get_fd(pidfd.as_fd(), n)
        }
        Ask::Memory => pidfd::proc_open(tid, "mem", OFlag::O_RDWR),
        Ask::Directory(which) => which.open(tid),
    }
}

/// The inode of the PID namespace of process `pid` (a child of the caller: its number cannot be reused
/// before the caller reaps it).
pub fn pid_namespace_of(pid: libc::pid_t) -> Result<u64, Errno> {
    pid_namespace(pidfd::open(pid, 0)?.as_fd())
}

/// The inode of the PID namespace of a pidfd's process.
fn pid_namespace(pidfd: BorrowedFd<'_>) -> Result<u64, Errno> {
    // SAFETY: an ioctl with no argument; a returned descriptor is new and ours alone.
    let ns = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_PID_NAMESPACE as _, 0) };
    if ns < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    Ok(nix::sys::stat::fstat(&ns)?.st_ino)
}

#[cfg(test)]
mod tests;
