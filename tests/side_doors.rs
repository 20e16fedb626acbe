//! End-to-end tests of issue 23's side doors, each trying to get through one: host Unix sockets
//! (invariant 3), root callers (invariant 4), a table emptied of its rules (invariant 3), caller CA paths
//! swapped for symbolic links (invariant 4). Root only; all traffic stays in the test's namespaces.

mod common;

use common::*;

/// Root without capabilities still reads every root-owned 0600 file of the host, so "*" and "@root" do
/// not give uid 0 a sandbox: only a profile that names root does, and a refused root is told how to allow
/// it. (On 53ed7b8 root got a sandbox from "*".)
#[test]
fn root_gets_a_sandbox_only_where_named() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net
        .daemon()
        .extra_toml("[[profile]]\nname = \"everyone\"\nusers = [\"*\", \"@root\"]\n")
        .start();
    let refused = d.exec(&root()).profile("everyone").args(["true"]).run();
    assert_code(&refused, 125);
    assert!(
        stderr(&refused).contains("to allow it, add \"root\" to the users of profile \"everyone\""),
        "{}",
        describe(&refused)
    );
    // The test user still gets it from "*", and root from a profile that names it.
    assert_code(
        &d.exec(&test_user())
            .profile("everyone")
            .args(["true"])
            .run(),
        0,
    );
    let allowed = d.exec(&root()).profile("rootonly").args(["id", "-u"]).run();
    assert_code(&allowed, 0);
    assert_eq!(stdout(&allowed).trim(), "0");
    d.finish();
}
