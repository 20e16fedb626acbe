//! Being told at once when something changes nftables: the kernel sends every committed change of a
//! table, chain, rule, set or element to the listeners of its NFNLGRP_NFTABLES group. The guard checks the
//! table when told, so that the time a gutted table stays gutted is the time to list and reinstall it,
//! not a polling period.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use futures::FutureExt;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;

/// `linux/netfilter/nfnetlink.h`, `linux/netfilter/nf_tables.h`; libc does not have them.
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NLMSG_HEADER: usize = 16;

pub struct Changes {
    socket: AsyncFd<OwnedFd>,
}

impl Changes {
    /// Joins the group in the calling thread's network namespace (the daemon's).
    pub fn subscribe() -> io::Result<Changes> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
        )?;
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same until it is dropped.
        let socket = unsafe { AsyncFd::register(fd) }?;
        Ok(Changes { socket })
    }

    /// Returns once a change to a table, chain, rule or set was committed, with every change already
    /// queued read. Elements do not count: each sandbox start adds its own and each end deletes them, and
    /// listing the table for each would cost every exec a run of `nft` (the guard's period catches an
    /// element deleted by something else). Lost notifications (a full receive buffer) count as a change.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut seen = false;
        loop {
            let mut ready = if seen {
                match self.socket.readable().now_or_never() {
                    Some(ready) => ready?,
                    None => return Ok(()),
                }
            } else {
                self.socket.readable().await?
            };
            match ready.try_io(|fd| {
                recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()).map_err(io::Error::from)
            }) {
                Ok(Ok(len)) => seen |= table_changed(&buffer[..len]),
                Ok(Err(error)) if error.raw_os_error() == Some(libc::ENOBUFS) => seen = true,
                Ok(Err(error)) => return Err(error),
                Err(_would_block) if seen => return Ok(()),
                Err(_would_block) => {}
            }
        }
    }
}

/// Whether a datagram of notifications holds one of nf_tables other than of elements or a new generation
/// (which ends every batch).
fn table_changed(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HEADER {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if kind >> 8 == NFNL_SUBSYS_NFTABLES
            && !matches!(
                kind & 0xff,
                NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM | NFT_MSG_NEWGEN
            )
        {
            return true;
        }
        if len < NLMSG_HEADER {
            break;
        }
        // NLMSG_ALIGN: the next message starts on a 4-byte boundary.
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests;
