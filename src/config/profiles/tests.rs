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
    assert!(!profile.allows("root", &[]));
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
    assert!(p.allows("alice", &[]));
    assert!(p.allows("bob", &strings(&["users", "dev"])));
    assert!(!p.allows("bob", &strings(&["users", "developers"])));
    assert!(!p.allows("dev", &[]));
    assert!(all.allows("anyone", &[]));
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
            .select_profile(requested, user, &strings(groups))
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
            .select_profile(None, "root", &[])
            .unwrap_err()
            .to_string(),
        format!("no [[profile]] in {PATH} allows user \"root\"")
    );
}
