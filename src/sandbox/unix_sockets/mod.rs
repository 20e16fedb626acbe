//! Invariant 3 for what is not the network: a sandbox reaches no path-named Unix socket of the host that
//! its profile does not list. Such a socket is a door out of every namespace (Docker's is root on the
//! host; a user's systemd bus starts processes outside the sandbox), and none of the kernel's other
//! tools closes it on Linux 6.x: Landlock scopes only abstract sockets (which the network namespace
//! already keeps apart), and hiding socket files with mounts misses those created after the sandbox
//! started.
//!
//! So the command's process installs a seccomp filter (`filter`) just before exec, and every call that
//! can name a socket by its path (connect, an addressed sendto, sendmsg, sendmmsg) waits for the
//! sandbox's PID 1, which serves them here as the supervisor. For each call it takes the program's socket
//! with pidfd_getfd and the address (and data) from its memory with one read (`target`), decides a Unix
//! path by the socket's file (`policy`: listed, or bound by the sandbox itself, `diag`), and makes the
//! call itself on that socket, from its copy: nothing the program changes afterwards, in its memory or in
//! its descriptor table, reaches the kernel unchecked, which SECCOMP_USER_NOTIF_FLAG_CONTINUE could not
//! promise. Calls on other sockets are made the same way, unchanged.
//!
//! The supervisor runs inside the sandbox, as the caller: its connect() is checked with the caller's
//! rights (write permission on the socket file, in the sandbox's mount namespace) and its peer sees the
//! caller's uid and groups, never root's. It is out of the command's reach: it makes itself non-dumpable
//! (no ptrace, no /proc/1/mem or /proc/1/fd), and as the PID namespace's init it ignores SIGKILL and
//! SIGSTOP from inside. If it is gone, the filter's calls fail (ENOSYS): the door stays shut. What the
//! kernel refuses a process of the same user (the socket and memory of a non-dumpable program), the
//! sandbox's keeper opens for it (`helper`), and the supervisor goes on as the caller.

mod diag;
pub mod filter;
pub mod helper;
mod pidfd;
mod policy;
mod target;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub use policy::Policy;
use target::Target;

/// The largest address any socket takes (`struct sockaddr_storage`); the kernel refuses longer.
const MAX_ADDRESS: usize = 128;
/// A sendmsg's ancillary data is copied up to this much (the kernel's optmem_max is 128 KiB by default).
const MAX_CONTROL: usize = 128 * 1024;
/// The kernel takes at most this many iovecs in a message, and this many messages in a sendmmsg.
const UIO_MAXIOV: usize = 1024;
/// At most this many descriptors in one message (SCM_MAX_FD).
const MAX_RIGHTS: usize = 253;
/// A datagram larger than this fails with EMSGSIZE, as it would with any socket's default limits.
const MAX_DATAGRAM: usize = 1 << 20;
/// A stream send is read from the program and sent in pieces of this size.
const STREAM_CHUNK: usize = 256 * 1024;
/// Calls that may block (a blocking connect, a send to a full socket) are made on threads of their own,
/// so that one slow peer does not hold up the sandbox's other calls; at most this many at once, and the
/// rest in turn.
const MAX_WORKERS: usize = 64;
/// A flag of the kernel's 32-bit entry points; a native call with it fails (libc does not have it).
const MSG_CMSG_COMPAT: u32 = 0x8000_0000;
/// `struct user_msghdr` and `struct mmsghdr` on 64-bit Linux.
const MSGHDR: usize = 56;
const MMSGHDR: usize = 64;

/// The filter's listener, from the process `pid` that installed it: PID 1 takes it from the command.
pub fn take_listener(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    Ok(Target::open(pid as u32, None)?.fd(fd)?)
}

/// What the mechanism needs from the kernel, tried (for `sandbox doctor`): Ok with what was found, or
/// Err naming what is missing. The filter is installed in a forked child, since it cannot be removed.
pub fn kernel_support() -> Result<String, String> {
    let mut missing = Vec::new();
    // SAFETY: the child only makes system calls and leaves with _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let installed =
                nix::sys::prctl::set_no_new_privs().is_ok() && filter::install().is_ok();
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(if installed { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
                _ => missing.push(
                    "seccomp user notification with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19)"
                        .into(),
                ),
            }
        }
        Err(_) => missing.push("fork (to try the seccomp filter)".into()),
    }
    // A container's seccomp filter may refuse these (systemd-nspawn's does, with EPERM) while the kernel
    // has them.
    const FILTERED: &str = "refused by a seccomp filter of this environment (systemd-nspawn: \
        --system-call-filter='pidfd_getfd openat2', or SystemCallFilter= in the .nspawn file)";
    match Target::open(std::process::id(), None).and_then(|target| target.fd(0)) {
        Ok(_) => {}
        Err(Errno::EPERM) => missing.push(format!("pidfd_getfd, {FILTERED}")),
        Err(_) => missing.push("pidfd_open and pidfd_getfd (Linux 5.6)".into()),
    }
    let how = nix::fcntl::OpenHow::new()
        .flags(nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC)
        .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, "/", how) {
        Ok(_) => {}
        Err(Errno::EPERM) => missing.push(format!("openat2, {FILTERED}")),
        Err(_) => missing.push("openat2 (Linux 5.6)".into()),
    }
    // Yama's modes 2 and 3 refuse pidfd_getfd and process_vm_readv even to an ancestor of the same user.
    let ptrace_scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope");
    if ptrace_scope.is_ok_and(|scope| scope.trim().parse::<u8>().is_ok_and(|scope| scope > 1)) {
        missing.push(
            "kernel.yama.ptrace_scope 0 or 1 (a sandbox's PID 1 reads its calls as an ancestor)"
                .into(),
        );
    }
    if diag::bound_here(diag::BoundFile::none()).is_err() {
        missing.push("Unix socket diagnostics (CONFIG_UNIX_DIAG, module unix_diag)".into());
    }
    if missing.is_empty() {
        Ok("seccomp user notification, pidfd_getfd, openat2, unix_diag".into())
    } else {
        Err(format!("missing: {}", missing.join(", ")))
    }
}

/// Serves the filter's calls until its listener fails. Never returns while the sandbox lives. `helper`
/// opens what the kernel refuses the supervisor (None: such calls fail).
pub fn serve(listener: OwnedFd, policy: Policy, helper: Option<helper::Helper>) {
    let supervisor = Arc::new(Supervisor {
        listener,
        policy,
        helper: helper.map(Arc::new),
        workers: AtomicUsize::new(0),
        told_undumpable: AtomicBool::new(false),
    });
    loop {
        match supervisor.receive() {
            Ok(call) => supervisor.handle(call),
            // Once every process under the filter has exited, receiving fails at once with ENOENT, and
            // no call can come again (only their children would inherit the filter): looping on would spin
            // a core until PID 1 exits, and starve it under a real-time policy.
            Err(Errno::ENOENT) if supervisor.orphaned() => return,
            // A program interrupted or killed while its call waited: the kernel dropped the call.
            Err(Errno::EINTR | Errno::ENOENT) => continue,
            // The listener is unusable; once it is closed every call of the filter fails (ENOSYS).
            Err(_) => return,
        }
    }
}

struct Supervisor {
    listener: OwnedFd,
    policy: Policy,
    helper: Option<Arc<helper::Helper>>,
    workers: AtomicUsize,
    /// Whether the caller was told once that a program's calls fail because it is not dumpable.
    told_undumpable: AtomicBool,
}

/// One call of the program, as the filter sent it.
struct Call {
    id: u64,
    tid: u32,
    nr: i64,
    args: [u64; 6],
}

/// The program's socket, and what decides how a call on it is made.
struct Socket {
    fd: OwnedFd,
    domain: i32,
    kind: i32,
    nonblocking: bool,
}

impl Socket {
    fn of(fd: OwnedFd) -> Result<Socket, Errno> {
        let int_option = |option| -> Result<i32, Errno> {
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a c_int-sized buffer for an int option.
            let got = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if got < 0 {
                return Err(Errno::last());
            }
            Ok(value)
        };
        let domain = int_option(libc::SO_DOMAIN)?;
        let kind = int_option(libc::SO_TYPE)?;
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        Ok(Socket {
            fd,
            domain,
            kind,
            nonblocking: flags & libc::O_NONBLOCK != 0,
        })
    }

    fn stream(&self) -> bool {
        self.kind == libc::SOCK_STREAM
    }
}

impl Supervisor {
    fn receive(&self) -> Result<Call, Errno> {
        // SAFETY: the kernel wants a zeroed struct and fills it.
        let mut raw: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes one seccomp_notif into `raw`.
        let got = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut raw as *mut libc::seccomp_notif,
            )
        };
        if got < 0 {
            return Err(Errno::last());
        }
        Ok(Call {
            id: raw.id,
            tid: raw.pid,
            // The filter sends native calls only; anything else is answered ENOSYS by `perform`.
            nr: if raw.data.arch == filter::native_arch() {
                i64::from(raw.data.nr)
            } else {
                -1
            },
            args: raw.data.args,
        })
    }

    /// Whether no process uses the filter any more (the kernel reports POLLHUP on its listener).
    fn orphaned(&self) -> bool {
        let mut listener = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        poll(&mut listener, PollTimeout::ZERO).is_ok()
            && listener[0]
                .revents()
                .is_some_and(|events| events.contains(PollFlags::POLLHUP))
    }

    fn respond(&self, id: u64, result: Result<i64, Errno>) {
        // SAFETY: a zeroed response is a valid one; the fields are set below.
        let mut response: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
        response.id = id;
        match result {
            Ok(value) => response.val = value,
            Err(errno) => response.error = -(errno as i32),
        }
        // SAFETY: the ioctl reads one seccomp_notif_resp. ENOENT (the program is gone, or a fatal signal
        // ended the call) needs nothing more.
        unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut response as *mut libc::seccomp_notif_resp,
            )
        };
    }

    /// Whether the program still waits in call `id`. Checked after its memory was read and before
    /// anything is done: the thread number may have been reused by another process by then.
    fn still_waiting(&self, id: u64) -> Result<(), Errno> {
        // SAFETY: the ioctl reads one u64.
        let got = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &id as *const u64,
            )
        };
        if got < 0 {
            return Err(Errno::ESRCH);
        }
        Ok(())
    }

    fn handle(self: &Arc<Self>, call: Call) {
        let prepared = Target::open(call.tid, self.helper.clone()).and_then(|target| {
            let socket = Socket::of(target.fd(call.args[0] as i32)?)?;
            Ok((target, socket))
        });
        let (target, socket) = match prepared {
            Ok(prepared) => prepared,
            Err(errno) => {
                if errno == Errno::EPERM {
                    self.tell_undumpable(call.tid);
                }
                return self.respond(call.id, Err(errno));
            }
        };
        if may_block(&call, &socket) && self.take_worker() {
            let supervisor = self.clone();
            let id = call.id;
            let spawned = std::thread::Builder::new()
                .name("sandbox-socket".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    let result = supervisor.perform(&call, &target, &socket);
                    supervisor.respond(call.id, result);
                    supervisor.workers.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                // No thread to be had (the caller's RLIMIT_NPROC, memory): the call fails as one the
                // kernel has no resources for.
                self.workers.fetch_sub(1, Ordering::AcqRel);
                self.respond(id, Err(Errno::ENOMEM));
            }
            return;
        }
        let result = self.perform(&call, &target, &socket);
        self.respond(call.id, result);
    }

    /// A program the supervisor may not take sockets from, and the keeper neither (the daemon without
    /// CAP_SYS_PTRACE), is one the kernel made non-dumpable (the filter refuses prctl's way there): its
    /// socket calls fail with EPERM, and the caller's terminal says why, once per sandbox.
    fn tell_undumpable(&self, tid: u32) {
        if self.told_undumpable.swap(true, Ordering::Relaxed) {
            return;
        }
        let name = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "sandbox: {} (pid {tid}) is not dumpable (an executable the caller may run but not \
             read), and the daemon may not take its sockets for it (that needs CAP_SYS_PTRACE, which \
             its systemd unit grants), so its socket calls fail with EPERM; `chmod o+r` the executable, \
             or let the daemon keep the capability",
            name.trim()
        );
    }

    /// Counts a worker in, unless MAX_WORKERS are busy (then the call is made in turn, on this thread).
    fn take_worker(&self) -> bool {
        self.workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
                (busy < MAX_WORKERS).then_some(busy + 1)
            })
            .is_ok()
    }

    fn perform(&self, call: &Call, target: &Target, socket: &Socket) -> Result<i64, Errno> {
        match call.nr {
            libc::SYS_connect => self.connect(call, target, socket),
            libc::SYS_sendto => self.sendto(call, target, socket),
            libc::SYS_sendmsg => {
                let header = target.read(call.args[1], MSGHDR)?;
                let sent = self.send(call, target, socket, &header, call.args[2] as u32)?;
                Ok(sent as i64)
            }
            libc::SYS_sendmmsg => self.sendmmsg(call, target, socket),
            _ => Err(Errno::ENOSYS),
        }
    }

    fn connect(&self, call: &Call, target: &Target, socket: &Socket) -> Result<i64, Errno> {
        let len = address_len(call.args[2])?;
        let mut address = target.read(call.args[1], len)?;
        self.still_waiting(call.id)?;
        // Held until the connect is done: the address names the socket through it.
        let mut _node = None;
        if let Some(path) = unix_path(socket, &address) {
            let node = self.policy.admit(target, path)?;
            address = policy::address_of(&node);
            _node = Some(node);
        }
        // SAFETY: the address buffer is valid for its length (an empty one is never read).
        let got = unsafe {
            libc::connect(
                socket.fd.as_raw_fd(),
                address.as_ptr().cast(),
                address.len() as libc::socklen_t,
            )
        };
        if got < 0 {
            return Err(Errno::last());
        }
        Ok(0)
    }

    /// sendto with an address (without one the filter lets it through): a sendmsg of one piece.
    fn sendto(&self, call: &Call, target: &Target, socket: &Socket) -> Result<i64, Errno> {
        let [_, buffer, len, flags, address, address_len] = call.args;
        // The kernel takes at most INT_MAX bytes in one call.
        let len = len.min(i32::MAX as u64) as usize;
        let message = Message::with(
            target,
            address,
            address_len as u32 as i32,
            vec![(buffer, len)],
            0,
            0,
        )?;
        let sent = self.send_message(call, target, socket, message, flags as u32)?;
        Ok(sent as i64)
    }

    fn sendmmsg(&self, call: &Call, target: &Target, socket: &Socket) -> Result<i64, Errno> {
        let [_, vector, count, flags, ..] = call.args;
        let count = (count as u32 as usize).min(UIO_MAXIOV);
        let mut sent = 0;
        for index in 0..count {
            let at = vector + (index * MMSGHDR) as u64;
            let result = target
                .read(at, MSGHDR)
                .and_then(|header| self.send(call, target, socket, &header, flags as u32))
                .and_then(|len| target.write(at + MSGHDR as u64, &(len as u32).to_ne_bytes()));
            match result {
                Ok(()) => sent += 1,
                // As the kernel: the error if nothing was sent, else how many messages were.
                Err(errno) if sent == 0 => return Err(errno),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// One message: `header` is the program's struct msghdr.
    fn send(
        &self,
        call: &Call,
        target: &Target,
        socket: &Socket,
        header: &[u8],
        flags: u32,
    ) -> Result<usize, Errno> {
        let message = Message::read(target, header)?;
        self.send_message(call, target, socket, message, flags)
    }

    fn send_message(
        &self,
        call: &Call,
        target: &Target,
        socket: &Socket,
        mut message: Message,
        flags: u32,
    ) -> Result<usize, Errno> {
        if flags & MSG_CMSG_COMPAT != 0 {
            return Err(Errno::EINVAL);
        }
        let mut rights = Vec::new();
        translate_rights(target, &mut message.control, &mut rights)?;
        // A Unix datagram goes where its address says; other sockets ignore or refuse an address, so only
        // there is a path looked up.
        let mut _node = None;
        if socket.kind == libc::SOCK_DGRAM {
            if let Some(path) = unix_path(socket, &message.name) {
                let node = self.policy.admit(target, path)?;
                message.name = policy::address_of(&node);
                _node = Some(node);
            }
        }
        self.still_waiting(call.id)?;
        let flags = flags as i32;
        let blocking = !socket.nonblocking && flags & libc::MSG_DONTWAIT == 0;
        let result = if socket.stream() {
            send_stream(target, socket, &message, flags, blocking)
        } else {
            let total = message.len()?;
            if total > MAX_DATAGRAM {
                return Err(Errno::EMSGSIZE);
            }
            let data = target.read_pieces(&message.iov)?;
            send_once(socket, &message.name, &data, &message.control, flags)
        };
        if result == Err(Errno::EPIPE) && flags & libc::MSG_NOSIGNAL == 0 {
            target.signal(libc::SIGPIPE);
        }
        result
    }
}

/// A message to send: its address and ancillary data copied from the program, its data still there.
struct Message {
    name: Vec<u8>,
    iov: Vec<(u64, usize)>,
    control: Vec<u8>,
}

impl Message {
    /// From the program's struct msghdr.
    fn read(target: &Target, header: &[u8]) -> Result<Message, Errno> {
        let word = |at: usize| u64_at(header, at);
        let (name, name_len) = (word(0), word(8) as u32 as i32);
        let (iov, iov_len) = (word(16), word(24));
        let (control, control_len) = (word(32), word(40));
        if iov_len > UIO_MAXIOV as u64 {
            return Err(Errno::EMSGSIZE);
        }
        let pieces = target.read(iov, iov_len as usize * 16)?;
        let iov = pieces
            .chunks_exact(16)
            .map(|piece| (u64_at(piece, 0), u64_at(piece, 8) as usize))
            .collect();
        Message::with(target, name, name_len, iov, control, control_len)
    }

    fn with(
        target: &Target,
        name: u64,
        name_len: i32,
        iov: Vec<(u64, usize)>,
        control: u64,
        control_len: u64,
    ) -> Result<Message, Errno> {
        // As the kernel: no name without a pointer, a negative length is invalid, a longer one is cut.
        let name = if name == 0 {
            Vec::new()
        } else if name_len < 0 {
            return Err(Errno::EINVAL);
        } else {
            target.read(name, (name_len as usize).min(MAX_ADDRESS))?
        };
        if control_len > MAX_CONTROL as u64 {
            return Err(Errno::ENOBUFS);
        }
        let control = if control_len == 0 {
            Vec::new()
        } else {
            target.read(control, control_len as usize)?
        };
        let message = Message { name, iov, control };
        message.len()?;
        Ok(message)
    }

    /// The data's length; EINVAL past what a call may carry.
    fn len(&self) -> Result<usize, Errno> {
        self.iov
            .iter()
            .try_fold(0usize, |total, &(_, len)| total.checked_add(len))
            .filter(|&total| total <= isize::MAX as usize)
            .ok_or(Errno::EINVAL)
    }
}

/// A stream's data in pieces of at most STREAM_CHUNK, read from the program as they go, the ancillary
/// data with the first. Stops where the kernel's own send would have: a short send, or EAGAIN once some
/// data went.
fn send_stream(
    target: &Target,
    socket: &Socket,
    message: &Message,
    flags: i32,
    blocking: bool,
) -> Result<usize, Errno> {
    let total = message.len()?;
    let mut sent = 0;
    loop {
        let pieces = window(&message.iov, sent, STREAM_CHUNK);
        let data = match target.read_pieces(&pieces) {
            Ok(data) => data,
            Err(_) if sent > 0 => return Ok(sent),
            Err(errno) => return Err(errno),
        };
        let (name, control): (&[u8], &[u8]) = if sent == 0 {
            (&message.name, &message.control)
        } else {
            (&[], &[])
        };
        let flags = if sent > 0 && !blocking {
            flags | libc::MSG_DONTWAIT
        } else {
            flags
        };
        match send_once(socket, name, &data, control, flags) {
            Ok(n) => {
                sent += n;
                if n < data.len() || sent >= total {
                    return Ok(sent);
                }
            }
            Err(_) if sent > 0 => return Ok(sent),
            Err(errno) => return Err(errno),
        }
    }
}

/// The pieces of `iov` from byte `skip`, at most `limit` bytes of them.
fn window(iov: &[(u64, usize)], mut skip: usize, mut limit: usize) -> Vec<(u64, usize)> {
    let mut pieces = Vec::new();
    for &(address, len) in iov {
        if limit == 0 {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(limit);
        pieces.push((address + skip as u64, take));
        limit -= take;
        skip = 0;
    }
    pieces
}

/// One sendmsg on the program's socket, never raising SIGPIPE in the supervisor.
fn send_once(
    socket: &Socket,
    name: &[u8],
    data: &[u8],
    control: &[u8],
    flags: i32,
) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call, which only reads them.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    if !name.is_empty() {
        header.msg_name = name.as_ptr().cast_mut().cast();
        header.msg_namelen = name.len() as libc::socklen_t;
    }
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if !control.is_empty() {
        header.msg_control = control.as_ptr().cast_mut().cast();
        header.msg_controllen = control.len();
    }
    // SAFETY: as above.
    let sent = unsafe { libc::sendmsg(socket.fd.as_raw_fd(), &header, flags | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(Errno::last());
    }
    Ok(sent as usize)
}

/// Replaces the program's descriptor numbers in SCM_RIGHTS with the supervisor's duplicates of them (kept
/// in `rights` until the send is done), so that the peer receives the very files the program sent.
fn translate_rights(
    target: &Target,
    control: &mut [u8],
    rights: &mut Vec<OwnedFd>,
) -> Result<(), Errno> {
    const HEADER: usize = 16;
    let mut at = 0;
    while at + HEADER <= control.len() {
        let len = u64_at(control, at) as usize;
        if len < HEADER || len > control.len() - at {
            return Err(Errno::EINVAL);
        }
        let level = u32_at(control, at + 8) as i32;
        let kind = u32_at(control, at + 12) as i32;
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for slot in control[at + HEADER..at + len].chunks_exact_mut(4) {
                if rights.len() >= MAX_RIGHTS {
                    return Err(Errno::EINVAL);
                }
                let theirs = u32_at(slot, 0) as i32;
                let ours = target.fd(theirs).map_err(|_| Errno::EBADF)?;
                slot.copy_from_slice(&ours.as_raw_fd().to_ne_bytes());
                rights.push(ours);
            }
        }
        // CMSG_ALIGN: the next header starts on an 8-byte boundary.
        at += (len + 7) & !7;
    }
    Ok(())
}

/// The native-endian u64 at `at` of bytes read from the program (0 past their end).
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// connect's address length: an int, at most MAX_ADDRESS.
fn address_len(arg: u64) -> Result<usize, Errno> {
    let len = arg as u32 as i32;
    if !(0..=MAX_ADDRESS as i32).contains(&len) {
        return Err(Errno::EINVAL);
    }
    Ok(len as usize)
}

/// The path of a path-named Unix address on a Unix socket (not abstract, not unnamed), up to its NUL.
fn unix_path<'a>(socket: &Socket, address: &'a [u8]) -> Option<&'a [u8]> {
    if socket.domain != libc::AF_UNIX || address.len() <= 2 {
        return None;
    }
    if u16::from_ne_bytes([address[0], address[1]]) != libc::AF_UNIX as u16 {
        return None;
    }
    let path = &address[2..];
    let path = &path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())];
    (!path.is_empty()).then_some(path)
}

/// Whether the call may wait for a peer: a blocking connect of a stream, or a blocking send other than
/// UDP's (which never waits long).
fn may_block(call: &Call, socket: &Socket) -> bool {
    if socket.nonblocking {
        return false;
    }
    let flags = match call.nr {
        libc::SYS_connect => {
            return socket.kind == libc::SOCK_STREAM || socket.kind == libc::SOCK_SEQPACKET
        }
        libc::SYS_sendmsg => call.args[2],
        _ => call.args[3],
    } as i32;
    let udp = (socket.domain == libc::AF_INET || socket.domain == libc::AF_INET6)
        && socket.kind == libc::SOCK_DGRAM;
    flags & libc::MSG_DONTWAIT == 0 && !udp
}

#[cfg(test)]
mod tests;
