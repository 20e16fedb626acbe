use super::*;

/// A socket bound in this test's own namespace is found by the file `stat` gives for its path, and
/// the same path's file, once the socket is gone and another file took the name, is not.
#[test]
fn a_socket_bound_here_is_found_by_its_file() {
    let dir = std::env::temp_dir().join(format!("sbx-diag-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let stat = nix::sys::stat::stat(&path).unwrap();
    assert!(bound_here(BoundFile::of(&stat)).unwrap());
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not a socket").unwrap();
    let stat = nix::sys::stat::stat(&path).unwrap();
    assert!(!bound_here(BoundFile::of(&stat)).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_error_or_a_short_message_is_an_error() {
    let mut files = Vec::new();
    let mut error = Vec::new();
    error.extend_from_slice(&20u32.to_ne_bytes());
    error.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
    error.extend_from_slice(&[0; 10]);
    error.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
    let got = parse(&error, &mut files).unwrap_err();
    assert_eq!(got.raw_os_error(), Some(libc::EPERM));
    let mut short = error.clone();
    short[0] = 200;
    assert!(parse(&short, &mut files).is_err());
    assert!(files.is_empty());
}
