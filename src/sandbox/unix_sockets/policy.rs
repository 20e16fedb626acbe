//! Which path-named Unix sockets a sandbox may reach: those its profile lists (`unix_sockets`, %U already
//! the caller's uid) and those a process of the sandbox bound itself. A socket is known by its file
//! (device and inode), never by the name a program used: the name is resolved once, as the program would
//! resolve it, to a descriptor, and the supervisor connects through that descriptor (/proc/self/fd/N), so
//! what was checked is what is reached.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::diag::{self, BoundFile};
use super::helper::Directory;
use super::target::Target;

pub struct Policy {
    listed: Vec<PathBuf>,
}

impl Policy {
    /// `listed`: the profile's sockets, for this caller.
    pub fn new(listed: Vec<PathBuf>) -> Policy {
        Policy { listed }
    }

    /// The socket `path` names for `target`, opened O_PATH, if the sandbox may connect to it. Refused:
    /// EACCES, as for a socket without write permission. A name that leads nowhere gets what connect()
    /// would have said (ENOENT, ENOTDIR, ELOOP, ECONNREFUSED for a file that is not a socket).
    pub(super) fn admit(&self, target: &Target, path: &[u8]) -> Result<OwnedFd, Errno> {
        let node = resolve(target, path)?;
        let stat = nix::sys::stat::fstat(&node)?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(Errno::ECONNREFUSED);
        }
        let file = BoundFile::of(&stat);
        if self.listed.iter().any(|listed| is_listed(listed, &stat)) {
            return Ok(node);
        }
        // The sandbox's own: a socket of its network namespace is bound to this file. Asking the kernel
        // costs a dump of the namespace's Unix sockets, so it comes after the list.
        match diag::bound_here(file) {
            Ok(true) => Ok(node),
            Ok(false) => Err(Errno::EACCES),
            // Fails closed: without the kernel's word the socket is not known to be the sandbox's.
            Err(_) => Err(Errno::EACCES),
        }
    }
}

/// Whether the listed path is, now, the file `stat` describes. Symbolic links in the listed path are not
/// followed: the sandbox runs as the caller, who may be able to put one in a directory of theirs.
fn is_listed(listed: &Path, stat: &libc::stat) -> bool {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    nix::fcntl::openat2(nix::fcntl::AT_FDCWD, listed, how)
        .and_then(|fd| nix::sys::stat::fstat(&fd))
        .is_ok_and(|listed| listed.st_dev == stat.st_dev && listed.st_ino == stat.st_ino)
}

/// Opens `path` O_PATH as `target` would resolve it for connect(): following symbolic links, from its
/// root or working directory. /proc/self and /proc/thread-self mean the target, not the supervisor.
/// (Symbolic links to absolute paths under a relative name resolve from the supervisor's root, which is
/// the target's unless the target made a mount namespace of its own; the socket reached is the one
/// checked either way.)
fn resolve(target: &Target, path: &[u8]) -> Result<OwnedFd, Errno> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    let tid = target.tid.to_string();
    let rewritten = [&b"/proc/self/"[..], b"/proc/thread-self/"]
        .iter()
        .find_map(|own| path.strip_prefix(*own))
        .map(|rest| [b"/proc/", tid.as_bytes(), b"/", rest].concat());
    let path = rewritten.as_deref().unwrap_or(path);
    let (dir, relative) = match path.strip_prefix(b"/") {
        Some(relative) => (target.directory(Directory::Root)?, relative),
        None => (target.directory(Directory::Cwd)?, path),
    };
    // The root itself is a directory, not a socket.
    let relative: &[u8] = if relative.is_empty() { b"." } else { relative };
    nix::fcntl::openat(
        &dir,
        std::ffi::OsStr::from_bytes(relative),
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The address of the socket `node` through the supervisor's own descriptor table: connect() follows the
/// magic link to the very file that was checked.
pub(super) fn address_of(node: &OwnedFd) -> Vec<u8> {
    let path = format!("/proc/self/fd/{}", node.as_raw_fd());
    let mut address = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    address.extend_from_slice(path.as_bytes());
    address.push(0);
    address
}
