use super::*;

#[test]
fn requests_survive_the_trip_and_garbage_is_refused() {
    for ask in [
        Ask::Socket(7),
        Ask::Socket(-1),
        Ask::Memory,
        Ask::Directory(Directory::Cwd),
        Ask::Directory(Directory::Root),
    ] {
        assert_eq!(Ask::decode(&ask.encode(4242)), Some((ask, 4242)));
    }
    let mut unknown = Ask::Memory.encode(1);
    unknown[0] = 9;
    assert_eq!(Ask::decode(&unknown), None);
    assert_eq!(Ask::decode(&Ask::Memory.encode(1)[..8]), None);
    assert_eq!(Ask::decode(&[0u8; REQUEST + 1]), None);
}

/// The keeper takes a socket only from a process of the sandbox's PID namespace: a pidfd of any other
/// (here the test's own process, against a namespace it is not in) gets EPERM, and nothing is opened.
#[test]
fn a_socket_is_taken_only_from_a_process_of_the_sandbox() {
    let own = pidfd::open(std::process::id() as libc::pid_t, 0).unwrap();
    let own_ns = pid_namespace_of(std::process::id() as libc::pid_t).unwrap();
    let stdin = answer(Ask::Socket(0), 0, Some(&own), own_ns);
    assert!(stdin.is_ok(), "{stdin:?}");
    assert_eq!(
        answer(Ask::Socket(0), 0, Some(&own), own_ns + 1).err(),
        Some(Errno::EPERM)
    );
    assert_eq!(
        answer(Ask::Socket(0), 0, None, own_ns).err(),
        Some(Errno::EINVAL)
    );
}
