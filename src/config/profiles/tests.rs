use super::*;
use crate::config::tests::{error, parse, PATH, SECRETS};

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn profile_defaults() {
    let config = parse("[[profile]]\nname = \"p\"\n");
    let profile = &config.profiles[0];
    assert!(profile.integrations.is_empty());
    assert!(profile.users.is_empty());
    assert_eq!(profile.egress, Egress::Allow);
    assert!(profile.allow_hosts.is_empty());
    assert!(!profile.allows(0, "root", &[]));
    assert!(profile.unix_sockets.is_empty());
}

#[test]
fn profiles_are_checked() {
    let base = format!(
        "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"a.com\"]\nheaders = {{ X = \"1\" }}\n\
         [[integration]]\nname = \"b\"\nhosts = [\"b.com\"]\nheaders = {{ X = \"1\" }}\n"
    );
    assert_eq!(
        error(&format!(
            "{base}[[profile]]\nname = \"y\"\nintegrations = [\"a\", \"x\"]\n"
        )),
        "t.toml:13:22: unknown integration \"x\" in profile \"y\"; defined: a, b"
    );
    assert_eq!(
        error("[[profile]]\nname = \"y\"\nintegrations = [\"x\"]\n"),
        "t.toml:3:17: unknown integration \"x\" in profile \"y\"; no [[integration]] is defined"
    );
    assert_eq!(
        error(&format!(
            "{base}[[profile]]\nname = \"y\"\nintegrations = [\"a\", \"a\"]\n"
        )),
        "t.toml:13:22: integration \"a\" is listed twice in profile \"y\""
    );
    assert_eq!(
        error("[[profile]]\nname = \"p\"\n[[profile]]\nname = \"q\"\n[[profile]]\nname = \"p\"\n"),
        "t.toml:6:8: profile \"p\" is defined twice"
    );
    assert_eq!(
        error("[[profile]]\nname = \"p q\"\n"),
        "t.toml:2:8: invalid profile name \"p q\"; use letters, digits, '_' and '-'"
    );
    assert_eq!(
        error("[[profile]]\nname = \"p\"\nusers = [\"alice\", \"@\"]\n"),
        "t.toml:3:19: invalid user \"@\"; expected a user name, \"@group\" or \"*\""
    );
    let config = parse(&format!(
        "{base}[[profile]]\nname = \"y\"\nintegrations = [\"b\", \"a\"]\negress = \"deny\"\n"
    ));
    let profile = &config.profiles[0];
    assert_eq!(profile.egress, Egress::Deny);
    assert_eq!(
        config
            .integrations_of(profile)
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["b", "a"]
    );
}

#[test]
fn users_matching() {
    let config = parse(
        "[[profile]]\nname = \"p\"\nusers = [\"alice\", \"@dev\"]\n\
         [[profile]]\nname = \"all\"\nusers = [\"*\"]\n",
    );
    let [p, all] = &config.profiles[..] else {
        panic!()
    };
    assert_eq!(
        p.users,
        [
            UserMatcher::User("alice".into()),
            UserMatcher::Group("dev".into())
        ]
    );
    assert!(p.allows(1000, "alice", &[]));
    assert!(p.allows(1001, "bob", &strings(&["users", "dev"])));
    assert!(!p.allows(1001, "bob", &strings(&["users", "developers"])));
    assert!(!p.allows(1002, "dev", &[]));
    assert!(all.allows(1003, "anyone", &[]));
}

#[test]
fn profile_selection() {
    let config = parse(
        "[[profile]]\nname = \"ops\"\nusers = [\"@ops\"]\n\
         [[profile]]\nname = \"dev\"\nusers = [\"alice\", \"bob\"]\n\
         [[profile]]\nname = \"default\"\nusers = [\"alice\"]\n\
         [[profile]]\nname = \"nobody\"\n",
    );
    let select = |requested, user, groups: &[&str]| {
        config
            .select_profile(requested, 1000, user, &strings(groups))
            .map(|p| p.name.as_str())
            .map_err(|e| e.to_string())
    };
    assert_eq!(select(None, "alice", &[]), Ok("default"));
    assert_eq!(select(None, "bob", &[]), Ok("dev"));
    assert_eq!(select(None, "carol", &["ops"]), Ok("ops"));
    assert_eq!(select(Some("dev"), "alice", &[]), Ok("dev"));
    assert_eq!(
        select(Some("ops"), "alice", &[]),
        Err(
            "profile \"ops\" does not allow user \"alice\"; user \"alice\" may use: dev, default"
                .into()
        )
    );
    assert_eq!(
        select(Some("prod"), "bob", &[]),
        Err("profile \"prod\" does not exist; user \"bob\" may use: dev".into())
    );
    assert_eq!(
        select(Some("nobody"), "carol", &[]),
        Err(
            "profile \"nobody\" does not allow user \"carol\"; user \"carol\" may use no profile"
                .into()
        )
    );
    assert_eq!(
        select(None, "carol", &["users"]),
        Err(format!("no [[profile]] in {PATH} allows user \"carol\""))
    );
    assert_eq!(
        parse("")
            .select_profile(None, 1000, "carol", &[])
            .unwrap_err()
            .to_string(),
        format!("no [[profile]] in {PATH} allows user \"carol\"")
    );
}

/// Root without capabilities still owns the host's files: "*" and groups do not give it a sandbox, its
/// name does, and a refusal says how to allow it.
#[test]
fn root_is_allowed_only_by_name() {
    let config = parse(
        "[[profile]]\nname = \"default\"\nusers = [\"*\"]\n\
         [[profile]]\nname = \"admins\"\nusers = [\"@root\", \"@wheel\"]\n\
         [[profile]]\nname = \"ops\"\nusers = [\"*\", \"root\"]\n",
    );
    let [star, group, named] = &config.profiles[..] else {
        panic!()
    };
    let root_groups = strings(&["root", "wheel"]);
    assert!(!star.allows(0, "root", &root_groups));
    assert!(!group.allows(0, "root", &root_groups));
    assert!(named.allows(0, "root", &root_groups));
    // Others are unchanged: "*" and groups include them.
    assert!(star.allows(1000, "alice", &[]));
    assert!(group.allows(1000, "alice", &strings(&["wheel"])));

    let select = |requested| {
        config
            .select_profile(requested, 0, "root", &root_groups)
            .map(|p| p.name.as_str())
            .map_err(|e| e.to_string())
    };
    assert_eq!(select(None), Ok("ops"));
    assert_eq!(select(Some("ops")), Ok("ops"));
    let how = "uid 0 gets a sandbox only from a profile that names it (\"*\" and groups do not include it: \
               without capabilities, root still reads and writes every file root owns)";
    assert_eq!(
        select(Some("default")),
        Err(format!(
            "profile \"default\" does not name \"root\" in its users; {how}; to allow it, add \"root\" to \
             the users of profile \"default\""
        ))
    );
    assert_eq!(
        parse("[[profile]]\nname = \"default\"\nusers = [\"*\", \"@root\"]\n")
            .select_profile(None, 0, "root", &root_groups)
            .unwrap_err()
            .to_string(),
        format!(
            "no [[profile]] in {PATH} names \"root\" in its users; {how}; to allow it, add \"root\" to the \
             users of a profile"
        )
    );
}

#[test]
fn unix_sockets_are_exact_absolute_paths() {
    let config = parse(
        "[[profile]]\nname = \"p\"\n\
         unix_sockets = [\"/run/user/%U/ssh-agent.socket\", \"/var/run/docker.sock\"]\n",
    );
    let paths: Vec<PathBuf> = config.profiles[0]
        .unix_sockets
        .iter()
        .map(|pattern| pattern.for_uid(1000))
        .collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/run/user/1000/ssh-agent.socket"),
            PathBuf::from("/var/run/docker.sock")
        ]
    );
    let how = "give an exact absolute path, with %U for the caller's uid";
    for (entry, why) in [
        ("run/x.sock", "not an absolute path"),
        ("/", "\"/\" is a directory"),
        (
            "/run//x.sock",
            "empty path component (\"//\" or a trailing \"/\")",
        ),
        (
            "/run/x/",
            "empty path component (\"//\" or a trailing \"/\")",
        ),
        ("/run/../x.sock", "\".\" and \"..\" are not allowed"),
        ("/run/./x.sock", "\".\" and \"..\" are not allowed"),
        ("/run/*.sock", ""),
        (
            "/run/%u.sock",
            "%U (the caller's uid) is the only % sequence",
        ),
        (
            "/run/%%U.sock",
            "%U (the caller's uid) is the only % sequence",
        ),
    ] {
        let text = format!("[[profile]]\nname = \"p\"\nunix_sockets = [\"{entry}\"]\n");
        if why.is_empty() {
            // No wildcards: "*" is a file name like any other, matched exactly.
            assert_eq!(
                parse(&text).profiles[0].unix_sockets[0].for_uid(0),
                PathBuf::from(entry)
            );
            continue;
        }
        assert_eq!(
            error(&text),
            format!("t.toml:3:17: invalid unix_sockets entry \"{entry}\": {why}; {how}"),
        );
    }
    assert_eq!(
        error("[[profile]]\nname = \"p\"\nunix_sockets = [\"/a\\u0000b\"]\n"),
        format!("t.toml:3:17: invalid unix_sockets entry \"/a\0b\": it holds a NUL byte; {how}")
    );
    assert_eq!(
        error("[[profile]]\nname = \"p\"\nunix_sockets = \"/a\"\n"),
        "t.toml:3:16: invalid type: string \"/a\", expected a sequence"
    );
}
