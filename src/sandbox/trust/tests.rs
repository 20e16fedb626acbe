use std::cell::RefCell;
use std::collections::HashMap;

use super::*;

const CA: &str = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n";
const CERT: &str = "-----BEGIN CERTIFICATE-----\nUk9PVA==\n-----END CERTIFICATE-----";
const DEBIAN: &str = "/etc/ssl/certs/ca-certificates.crt";
const FEDORA: &str = "/etc/pki/tls/certs/ca-bundle.crt";

fn files(list: &[(&str, &str)]) -> HashMap<PathBuf, Vec<u8>> {
    list.iter()
        .map(|(path, content)| (PathBuf::from(path), content.as_bytes().to_vec()))
        .collect()
}

fn env(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Runs `plan` and returns it with the paths `caller_files` was asked for.
fn run(
    system: &[(&str, &str)],
    caller_env: &[(&str, &str)],
    caller: &[(&str, &str)],
) -> (TrustPlan, Vec<PathBuf>) {
    let system = files(system);
    let caller = files(caller);
    let asked = RefCell::new(Vec::new());
    let plan = plan(
        CA,
        &|path| system.get(path).cloned(),
        &env(caller_env),
        &|path| {
            asked.borrow_mut().push(path.to_owned());
            caller.get(path).cloned()
        },
    );
    (plan, asked.into_inner())
}

fn file<'a>(plan: &'a TrustPlan, path: &str) -> Option<&'a str> {
    plan.files
        .iter()
        .find(|(p, _)| p == Path::new(path))
        .map(|(_, content)| std::str::from_utf8(content).unwrap())
}

fn var<'a>(plan: &'a TrustPlan, name: &str) -> Option<&'a str> {
    plan.env
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.as_str())
}

#[test]
fn system_bundles_get_the_ca_appended_on_a_line_of_its_own() {
    let (plan, _) = run(
        &[
            (DEBIAN, &format!("{CERT}\n")),
            (FEDORA, CERT),
            ("/etc/ssl/cert.pem", ""),
        ],
        &[],
        &[],
    );
    assert_eq!(plan.files.len(), 3);
    assert_eq!(file(&plan, DEBIAN), Some(format!("{CERT}\n{CA}").as_str()));
    assert_eq!(file(&plan, FEDORA), Some(format!("{CERT}\n{CA}").as_str()));
    assert_eq!(file(&plan, "/etc/ssl/cert.pem"), Some(CA));
    assert_eq!(with_ca(b"x\r\n", "ca"), b"x\r\nca\n");
}

#[test]
fn unset_variables_point_at_the_first_replaced_bundle() {
    let (plan, asked) = run(&[(FEDORA, CERT), ("/etc/ssl/cert.pem", CERT)], &[], &[]);
    assert!(asked.is_empty());
    let names: Vec<_> = plan.env.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, SET_WHEN_UNSET);
    assert!(plan.env.iter().all(|(_, value)| value == FEDORA));
    for name in [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "DENO_CERT",
    ] {
        assert_eq!(var(&plan, name), Some(FEDORA));
    }
    // Tools that already read the distribution bundle keep their own configuration.
    for name in APPEND_IF_SET {
        assert_eq!(var(&plan, name), None);
    }
}

#[test]
fn a_caller_bundle_keeps_its_path_and_gets_the_ca() {
    let (plan, asked) = run(
        &[(DEBIAN, CERT)],
        &[
            ("SSL_CERT_FILE", "/home/u/corp.pem"),
            ("GIT_SSL_CAINFO", "/home/u/./git//ca.pem"),
            ("NODE_EXTRA_CA_CERTS", "/home/u/corp.pem"),
        ],
        &[("/home/u/corp.pem", CERT), ("/home/u/git/ca.pem", CERT)],
    );
    assert_eq!(var(&plan, "SSL_CERT_FILE"), None);
    assert_eq!(var(&plan, "GIT_SSL_CAINFO"), None);
    assert_eq!(var(&plan, "NODE_EXTRA_CA_CERTS"), None);
    assert_eq!(var(&plan, "REQUESTS_CA_BUNDLE"), Some(DEBIAN));
    assert_eq!(
        file(&plan, "/home/u/corp.pem"),
        Some(format!("{CERT}\n{CA}").as_str())
    );
    assert_eq!(
        file(&plan, "/home/u/git/ca.pem"),
        Some(format!("{CERT}\n{CA}").as_str())
    );
    // Two variables naming one file: read once, one entry.
    assert_eq!(plan.files.len(), 3);
    assert_eq!(asked.len(), 2);
}

#[test]
fn a_caller_variable_naming_a_system_bundle_adds_nothing() {
    let (plan, asked) = run(&[(DEBIAN, CERT)], &[("SSL_CERT_FILE", DEBIAN)], &[]);
    assert!(asked.is_empty());
    assert_eq!(plan.files.len(), 1);
    assert_eq!(var(&plan, "SSL_CERT_FILE"), None);
}

#[test]
fn kernel_relative_and_climbing_paths_are_never_read() {
    let bad = [
        "/proc/self/environ",
        "/proc",
        "/sys/kernel/notes",
        "/dev/stdin",
        "//dev/./null",
        "/etc/../proc/self/environ",
        "relative/ca.pem",
        "./ca.pem",
        "/",
    ];
    for value in bad {
        let (plan, asked) = run(&[(DEBIAN, CERT)], &[("SSL_CERT_FILE", value)], &[]);
        assert!(asked.is_empty(), "{value}: {asked:?}");
        assert_eq!(plan.files.len(), 1, "{value}");
        assert_eq!(var(&plan, "SSL_CERT_FILE"), None, "{value}");
    }
    assert_eq!(
        caller_path("/devices/ca.pem"),
        Some(PathBuf::from("/devices/ca.pem"))
    );
    assert_eq!(
        caller_path("/home/proc/ca.pem"),
        Some(PathBuf::from("/home/proc/ca.pem"))
    );
}

#[test]
fn unreadable_empty_or_foreign_caller_files_are_left_alone() {
    let big = format!("{CERT}\n{}", "x".repeat(MAX_CALLER_FILE));
    let (plan, asked) = run(
        &[(DEBIAN, CERT)],
        &[
            ("SSL_CERT_FILE", "/home/u/missing.pem"),
            ("REQUESTS_CA_BUNDLE", "/home/u/notes.txt"),
            ("AWS_CA_BUNDLE", "/home/u/big.pem"),
            ("PIP_CERT", "/home/u/empty.pem"),
        ],
        &[
            ("/home/u/notes.txt", "root::0:0::/root:/bin/sh\n"),
            ("/home/u/big.pem", &big),
            ("/home/u/empty.pem", ""),
        ],
    );
    assert_eq!(asked.len(), 4);
    assert_eq!(plan.files.len(), 1);
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "AWS_CA_BUNDLE",
        "PIP_CERT",
    ] {
        assert_eq!(var(&plan, name), None, "{name}");
    }
}

#[test]
fn empty_values_count_as_unset_and_the_first_entry_wins() {
    let (plan, asked) = run(
        &[(DEBIAN, CERT)],
        &[
            ("CURL_CA_BUNDLE", ""),
            ("GIT_SSL_CAINFO", ""),
            ("SSL_CERT_FILE", "/home/u/a.pem"),
            ("SSL_CERT_FILE", "/home/u/b.pem"),
        ],
        &[("/home/u/a.pem", CERT), ("/home/u/b.pem", CERT)],
    );
    assert_eq!(var(&plan, "CURL_CA_BUNDLE"), Some(DEBIAN));
    assert_eq!(var(&plan, "GIT_SSL_CAINFO"), None);
    assert_eq!(asked, [PathBuf::from("/home/u/a.pem")]);
    assert!(file(&plan, "/home/u/a.pem").is_some());
}

#[test]
fn without_a_system_bundle_only_caller_bundles_can_carry_the_ca() {
    let (plan, _) = run(
        &[],
        &[("NPM_CONFIG_CAFILE", "/home/u/npm.pem")],
        &[("/home/u/npm.pem", "-----BEGIN TRUSTED CERTIFICATE-----\n")],
    );
    assert!(plan.env.is_empty());
    assert_eq!(plan.files.len(), 1);
    assert!(file(&plan, "/home/u/npm.pem").unwrap().ends_with(CA));
}

#[test]
fn variable_lists_do_not_overlap() {
    for name in SET_WHEN_UNSET {
        assert!(!APPEND_IF_SET.contains(name), "{name}");
    }
}

#[test]
fn java_keystores_are_replaced_where_they_exist_and_a_bundle_does() {
    let java = JAVA_KEYSTORES[0];
    let (plan, _) = run(&[(DEBIAN, CERT), (java, "")], &[], &[]);
    assert_eq!(plan.java_keystores, vec![PathBuf::from(java)]);
    assert!(file(&plan, java).is_none(), "made by the keeper, not sent");
    let (plan, _) = run(&[(java, "")], &[], &[]);
    assert!(
        plan.java_keystores.is_empty(),
        "no bundle to take the roots from: Java keeps its store"
    );
}

/// Reads a JKS as Java does: (alias, certificate) entries, after checking the seal.
fn read_jks(store: &[u8]) -> Vec<(String, Vec<u8>)> {
    let (body, seal) = store.split_at(store.len() - 20);
    let mut expected = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    expected.update(b"\0c\0h\0a\0n\0g\0e\0i\0t");
    expected.update(b"Mighty Aphrodite");
    expected.update(body);
    assert_eq!(seal, expected.finish().as_ref(), "seal for \"changeit\"");
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
    let u16_at = |at: usize| u16::from_be_bytes(body[at..at + 2].try_into().unwrap()) as usize;
    assert_eq!(u32_at(0), 0xfeed_feed);
    assert_eq!(u32_at(4), 2);
    let mut entries = Vec::new();
    let mut at = 12;
    for _ in 0..u32_at(8) {
        assert_eq!(u32_at(at), 2, "a trusted-certificate entry");
        let alias_len = u16_at(at + 4);
        let alias = String::from_utf8(body[at + 6..at + 6 + alias_len].to_vec()).unwrap();
        at += 6 + alias_len + 8;
        assert_eq!(&body[at..at + 7], b"\0\x05X.509");
        let len = u32_at(at + 7);
        entries.push((alias, body[at + 11..at + 11 + len].to_vec()));
        at += 11 + len;
    }
    assert_eq!(at, body.len(), "nothing after the entries but the seal");
    entries
}

#[test]
fn java_keystore_holds_the_bundles_certificates_then_the_ca() {
    let make = |name: &str| rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let (root1, root2, ca) = (make("root1.test"), make("root2.test"), make("ca.test"));
    let bundle = format!(
            "# comment lines, as in some bundles\n{}\n{}-----BEGIN TRUSTED CERTIFICATE-----\nQ0E=\n-----END TRUSTED CERTIFICATE-----\n",
            root1.cert.pem(),
            root2.cert.pem()
        );
    let store = java_keystore(bundle.as_bytes(), &ca.cert.pem(), 1_700_000_000_000);
    let entries = read_jks(&store);
    let want = [
        ("system-0", root1.cert.der()),
        ("system-1", root2.cert.der()),
        ("sandbox-ca", ca.cert.der()),
    ];
    assert_eq!(entries.len(), want.len(), "{entries:?}");
    for ((alias, der), (want_alias, want_der)) in entries.iter().zip(want) {
        assert_eq!(alias, want_alias);
        assert_eq!(der.as_slice(), want_der.as_ref());
    }
    let empty = read_jks(&java_keystore(b"", &ca.cert.pem(), 0));
    assert_eq!(
        empty.len(),
        1,
        "a bundle without certificates leaves the CA alone"
    );
}
#[test]
fn pem_certificates_skip_what_does_not_decode() {
    let der = |text: &str| BASE64.decode(text).unwrap();
    let bundle =
        "junk\r\n-----BEGIN CERTIFICATE-----\r\nUk9P\r\nVA==\r\n-----END CERTIFICATE-----\r\n\
                      -----BEGIN CERTIFICATE-----\n*not base64*\n-----END CERTIFICATE-----\n\
                      -----BEGIN CERTIFICATE-----\nQ0\nE=\n-----END CERTIFICATE-----\n\
                      -----BEGIN CERTIFICATE-----\nTk9FTkQ=\n";
    assert_eq!(
            pem_certificates(bundle.as_bytes()),
            vec![der("Uk9PVA=="), der("Q0E=")],
            "CRLF lines, and lines not of four characters, decode; the bad block and the unterminated one \
             are left out"
        );
    assert!(pem_certificates(&[0xff, 0xfe, b'-']).is_empty());
}
