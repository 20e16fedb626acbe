//! Which files the Unix sockets of this network namespace are bound to, from the kernel's socket
//! diagnostics (NETLINK_SOCK_DIAG, UNIX_DIAG_VFS: device and inode of each bound socket's file). A path
//! socket that a process of the sandbox bound is one of them; a host's socket is not, wherever its file
//! is and whatever it is called. Matching the file rather than the path name keeps a name the sandbox
//! chose (a mount of its own, a rename) from passing for another.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `linux/sock_diag.h`, `linux/unix_diag.h`; libc does not have them.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UNIX_DIAG_VFS: u16 = 1;
const NLMSG_HEADER: usize = 16;
/// `struct unix_diag_msg`: family, type, state, pad, inode, cookie.
const UNIX_DIAG_MSG: usize = 16;

/// The file a socket is bound to: the device as the kernel numbers it (`s_dev`) and the inode's low 32
/// bits, which is all the diagnostics give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BoundFile {
    dev: u32,
    ino: u32,
}

impl BoundFile {
    /// A file no socket is bound to (device 0 is never a file system's): asks the kernel only whether
    /// it answers.
    pub(super) fn none() -> BoundFile {
        BoundFile { dev: 0, ino: 0 }
    }

    /// The file `stat` describes, numbered as the diagnostics number it.
    pub(super) fn of(stat: &libc::stat) -> BoundFile {
        let (major, minor) = (libc::major(stat.st_dev), libc::minor(stat.st_dev));
        BoundFile {
            // The kernel's dev_t: 12 bits of major above 20 bits of minor.
            dev: (major << 20) | (minor & 0xf_ffff),
            ino: stat.st_ino as u32,
        }
    }
}

/// Whether a Unix socket of this network namespace is bound to `file`.
pub(super) fn bound_here(file: BoundFile) -> io::Result<bool> {
    Ok(bound_files()?.contains(&file))
}

fn bound_files() -> io::Result<Vec<BoundFile>> {
    // SAFETY: plain socket(2); the descriptor is new and ours alone.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = Vec::with_capacity(NLMSG_HEADER + 24);
    request.extend_from_slice(&((NLMSG_HEADER + 24) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
                                                    // struct unix_diag_req: family, protocol, pad, states (all), inode (any), show, cookie.
    request.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    request.extend_from_slice(&u32::MAX.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&UDIAG_SHOW_VFS.to_ne_bytes());
    request.extend_from_slice(&[0u8; 8]);
    // SAFETY: a valid buffer; the kernel is the default destination of a netlink socket.
    if unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    let mut files = Vec::new();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: the buffer is valid for its length.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if got == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        if parse(&buffer[..got as usize], &mut files)? {
            return Ok(files);
        }
    }
}

/// Adds the bound files of the messages in `datagram` to `files`; true once the dump is done.
fn parse(datagram: &[u8], files: &mut Vec<BoundFile>) -> io::Result<bool> {
    let truncated = || io::Error::new(io::ErrorKind::InvalidData, "truncated sock_diag message");
    let mut rest = datagram;
    while rest.len() >= NLMSG_HEADER {
        let len = u32::from_ne_bytes(rest[0..4].try_into().map_err(|_| truncated())?) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HEADER || len > rest.len() {
            return Err(truncated());
        }
        let body = &rest[NLMSG_HEADER..len];
        match kind {
            k if k == libc::NLMSG_DONE as u16 => return Ok(true),
            k if k == libc::NLMSG_ERROR as u16 => {
                let code = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(truncated)?;
                return Err(io::Error::from_raw_os_error(-code));
            }
            _ => {
                let mut attributes = body.get(UNIX_DIAG_MSG..).unwrap_or_default();
                while attributes.len() >= 4 {
                    let attr_len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
                    let attr_type = u16::from_ne_bytes([attributes[2], attributes[3]]);
                    if attr_len < 4 || attr_len > attributes.len() {
                        return Err(truncated());
                    }
                    if attr_type == UNIX_DIAG_VFS && attr_len >= 12 {
                        let word = |at: usize| {
                            u32::from_ne_bytes([
                                attributes[at],
                                attributes[at + 1],
                                attributes[at + 2],
                                attributes[at + 3],
                            ])
                        };
                        files.push(BoundFile {
                            ino: word(4),
                            dev: word(8),
                        });
                    }
                    let aligned = (attr_len + 3) & !3;
                    attributes = attributes.get(aligned..).unwrap_or_default();
                }
            }
        }
        let aligned = (len + 3) & !3;
        rest = rest.get(aligned..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
