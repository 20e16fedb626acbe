use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;

use super::*;
use crate::testutil::{new_netns, root_or_skip};

fn socket(domain: i32, kind: i32) -> Socket {
    Socket {
        fd: std::fs::File::open("/dev/null").unwrap().into(),
        domain,
        kind,
        nonblocking: false,
    }
}

fn unix_address(path: &[u8]) -> Vec<u8> {
    let mut address = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    address.extend_from_slice(path);
    address
}

#[test]
fn only_path_addresses_of_unix_sockets_are_paths() {
    let unix = socket(libc::AF_UNIX, libc::SOCK_STREAM);
    assert_eq!(
        unix_path(&unix, &unix_address(b"/run/x.sock\0junk")),
        Some(&b"/run/x.sock"[..])
    );
    assert_eq!(
        unix_path(&unix, &unix_address(b"rel.sock")),
        Some(&b"rel.sock"[..])
    );
    // Abstract (per network namespace), unnamed, and another family's address on a Unix socket.
    assert_eq!(unix_path(&unix, &unix_address(b"\0abstract")), None);
    assert_eq!(unix_path(&unix, &unix_address(b"")), None);
    let mut unspec = unix_address(b"/run/x.sock");
    unspec[0..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
    assert_eq!(unix_path(&unix, &unspec), None);
    // A TCP socket cannot reach a path, whatever its address says.
    let tcp = socket(libc::AF_INET, libc::SOCK_STREAM);
    assert_eq!(unix_path(&tcp, &unix_address(b"/run/x.sock")), None);
}

#[test]
fn address_lengths_are_the_kernels() {
    assert_eq!(address_len(0), Ok(0));
    assert_eq!(address_len(128), Ok(128));
    assert_eq!(address_len(129), Err(Errno::EINVAL));
    // An int: the high half of the register is not part of it; a negative one is invalid.
    assert_eq!(address_len(0x1_0000_0010), Ok(16));
    assert_eq!(address_len(u64::from(u32::MAX)), Err(Errno::EINVAL));
}

#[test]
fn a_window_over_pieces_skips_then_limits() {
    let iov = [(1000, 10), (2000, 0), (3000, 5)];
    assert_eq!(window(&iov, 0, 100), [(1000, 10), (3000, 5)]);
    assert_eq!(window(&iov, 4, 8), [(1004, 6), (3000, 2)]);
    assert_eq!(window(&iov, 12, 100), [(3002, 3)]);
    assert!(window(&iov, 15, 100).is_empty());
}

#[test]
fn only_blocking_calls_that_wait_for_a_peer_get_a_thread() {
    let call = |nr, flags: u64| Call {
        id: 0,
        tid: 0,
        nr,
        args: [0, 0, flags, flags, 0, 0],
    };
    let mut stream = socket(libc::AF_UNIX, libc::SOCK_STREAM);
    assert!(may_block(&call(libc::SYS_connect, 0), &stream));
    assert!(may_block(&call(libc::SYS_sendmsg, 0), &stream));
    assert!(!may_block(
        &call(libc::SYS_sendmsg, libc::MSG_DONTWAIT as u64),
        &stream
    ));
    stream.nonblocking = true;
    assert!(!may_block(&call(libc::SYS_connect, 0), &stream));
    let udp = socket(libc::AF_INET, libc::SOCK_DGRAM);
    assert!(!may_block(&call(libc::SYS_connect, 0), &udp));
    assert!(!may_block(&call(libc::SYS_sendto, 0), &udp));
}

/// What the child reports, one i32 each: 0 or an errno.
const RESULTS: usize = 8;

/// The child: raw system calls only (it was forked from a process with other threads, so it must not
/// allocate). Enters `netns`, binds its own socket, installs the filter, hands its number over, then
/// makes the calls whose outcomes it writes to `report`.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    netns: i32,
    fprog: &libc::sock_fprog,
    to_parent: i32,
    from_parent: i32,
    report: i32,
    host: &[u8],
    listed: &[u8],
    own: &[u8],
    host_datagram: &[u8],
) -> ! {
    let errno = || *libc::__errno_location();
    let outcome = |got: isize| if got < 0 { errno() } else { 0 };
    let mut results = [-1i32; RESULTS];
    let address = |a: &[u8]| {
        (
            a.as_ptr().cast::<libc::sockaddr>(),
            a.len() as libc::socklen_t,
        )
    };
    if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
        libc::_exit(10);
    }
    let own_server = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
    let (own_ptr, own_len) = address(own);
    if libc::bind(own_server, own_ptr, own_len) != 0 || libc::listen(own_server, 8) != 0 {
        libc::_exit(11);
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        libc::_exit(12);
    }
    let listener = libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
        fprog as *const libc::sock_fprog,
    ) as i32;
    if listener < 0 {
        libc::_exit(13);
    }
    let mut ack = [0u8; 1];
    if libc::write(to_parent, (&listener as *const i32).cast(), 4) != 4
        || libc::read(from_parent, ack.as_mut_ptr().cast(), 1) != 1
    {
        libc::_exit(14);
    }
    libc::close(listener);
    for (slot, target) in [(0, host), (1, listed), (2, own)] {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        let (ptr, len) = address(target);
        results[slot] = outcome(libc::connect(s, ptr, len) as isize);
    }
    let datagram = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
    let (ptr, len) = address(host_datagram);
    results[3] = outcome(libc::sendto(datagram, b"x".as_ptr().cast(), 1, 0, ptr, len));
    // SCM_RIGHTS over a socket pair: the peer gets a descriptor of the same file.
    let mut pair = [0i32; 2];
    libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr());
    let mut data = *b"f";
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
    (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    *libc::CMSG_DATA(cmsg).cast::<i32>() = report;
    let mut header: libc::msghdr = std::mem::zeroed();
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = libc::CMSG_SPACE(4) as usize;
    results[4] = outcome(libc::sendmsg(pair[0], &header, 0));
    let mut received = [0u64; 4];
    header.msg_control = received.as_mut_ptr().cast();
    header.msg_controllen = 32;
    let got = libc::recvmsg(pair[1], &mut header, 0);
    let passed = *libc::CMSG_DATA(received.as_mut_ptr().cast::<libc::cmsghdr>()).cast::<i32>();
    let mut mine: libc::stat = std::mem::zeroed();
    let mut theirs: libc::stat = std::mem::zeroed();
    libc::fstat(report, &mut mine);
    libc::fstat(passed, &mut theirs);
    results[5] = if got == 1 && passed != report && mine.st_ino == theirs.st_ino {
        0
    } else {
        -2
    };
    results[6] =
        outcome(libc::syscall(libc::SYS_io_uring_setup, 8, std::ptr::null::<u8>()) as isize);
    results[7] = outcome(libc::syscall(0x4000_0000 | 42, datagram, ptr, len) as isize);
    libc::write(report, results.as_ptr().cast(), 4 * RESULTS);
    libc::_exit(0)
}

fn sockaddr(path: &Path) -> Vec<u8> {
    unix_address(path.as_os_str().as_encoded_bytes())
        .into_iter()
        .chain([0])
        .collect()
}

/// The supervisor on this kernel, for a process that installed the filter: a socket its namespace's
/// processes did not bind is refused, even one anyone may write; a listed one and its own are reached;
/// descriptors it sends reach their peer; io_uring and x32 are closed; the supervisor returns once the
/// process is gone.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_supervisor_refuses_unlisted_sockets_and_makes_the_other_calls() {
    if !root_or_skip("the_supervisor_refuses_unlisted_sockets_and_makes_the_other_calls") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sbx-unix-sockets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let host = UnixListener::bind(dir.join("host.sock")).unwrap();
    let _listed = UnixListener::bind(dir.join("listed.sock")).unwrap();
    let host_datagram = UnixDatagram::bind(dir.join("host.dgram")).unwrap();
    host.set_nonblocking(true).unwrap();
    host_datagram.set_nonblocking(true).unwrap();
    let addresses = [
        sockaddr(&dir.join("host.sock")),
        sockaddr(&dir.join("listed.sock")),
        sockaddr(&dir.join("own.sock")),
        sockaddr(&dir.join("host.dgram")),
    ];
    let netns = new_netns();
    let program = filter::program();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    let (from_child, to_parent) = nix::unistd::pipe().unwrap();
    let (from_parent, to_child) = nix::unistd::pipe().unwrap();
    let (reports, report) = nix::unistd::pipe().unwrap();
    // SAFETY: the child makes raw system calls on memory allocated before the fork, then exits.
    let pid = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            child(
                netns.as_raw_fd(),
                &fprog,
                to_parent.as_raw_fd(),
                from_parent.as_raw_fd(),
                report.as_raw_fd(),
                &addresses[0],
                &addresses[1],
                &addresses[2],
                &addresses[3],
            )
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop((to_parent, from_parent, report));
    let mut number = [0u8; 4];
    std::fs::File::from(from_child)
        .read_exact(&mut number)
        .unwrap();
    let listener = take_listener(pid.as_raw(), i32::from_ne_bytes(number)).unwrap();
    std::fs::File::from(to_child).write_all(b"k").unwrap();
    let policy = Policy::new(vec![dir.join("listed.sock")]);
    let child_netns = netns.try_clone().unwrap();
    // The supervisor lives in the sandbox's network namespace, as PID 1 does.
    let (served, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(child_netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        serve(listener, policy, None);
        let _ = served.send(());
    });
    let mut results = [0u8; 4 * RESULTS];
    std::fs::File::from(reports)
        .read_exact(&mut results)
        .unwrap();
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    let results: Vec<i32> = results
        .chunks(4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
    assert_eq!(
        results,
        [
            libc::EACCES, // the host's socket, 0777 and in the same directory
            0,            // listed
            0,            // bound by a process of the namespace
            libc::EACCES, // a datagram to the host's socket
            0,            // sendmsg with SCM_RIGHTS
            0,            // ... and the peer got the file
            libc::ENOSYS, // io_uring_setup
            libc::EACCES, // x32 connect
        ]
    );
    assert!(host.accept().is_err(), "the host's socket was reached");
    assert!(
        host_datagram.recv(&mut [0u8; 8]).is_err(),
        "a datagram reached the host's socket"
    );
    // With no process left under the filter, the supervisor returns rather than spin on its listener.
    assert!(
        done.recv_timeout(std::time::Duration::from_secs(5)).is_ok(),
        "the supervisor still serves a filter nobody uses"
    );
}

use std::io::{Read, Write};
