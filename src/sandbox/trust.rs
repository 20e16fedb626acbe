//! Making one sandbox's CA trusted inside that sandbox and nowhere else (DESIGN step 2,
//! invariant 5): which files the sandbox sees with the CA appended, and which environment
//! variables point programs with their own CA stores at such a file.
//!
//! [`plan`] only computes; how the lifecycle applies the result is why nothing outside the
//! sandbox ever trusts the CA. Each file is bind-mounted over its path inside the sandbox's own
//! mount namespace, whose mounts are slaves of the host's: host changes reach the sandbox, but
//! nothing mounted inside propagates out, so the host and every other sandbox keep reading the
//! unchanged file, and the mount goes away with the namespace. The variables are set only in the
//! environment handed to the sandboxed command, so they reach its descendants and no other
//! process. Only the CA certificate is written; its private key never leaves the daemon.
//!
//! A file can only be replaced where one exists (a bind mount needs a target), so every variable
//! the plan sets points at a replaced distribution bundle; on a host without one, programs that
//! need a variable are left as they are.
//!
//! Java reads no PEM bundle: its trust store is a keystore that the distribution derives from the
//! bundle. Where one exists, the sandbox sees instead a keystore made from the bundle's certificates
//! and the CA ([`java_keystore`]), so unmodified Java programs trust the CA too.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Distribution CA bundles, PEM. Several are symlinks to another on some distributions; the
/// lifecycle's bind mount follows the link, and both entries then carry the same content.
pub const SYSTEM_BUNDLES: &[&str] = &[
    // Debian, Ubuntu, Gentoo, Arch (link), Alpine (ca-certificates)
    "/etc/ssl/certs/ca-certificates.crt",
    // Fedora, RHEL, CentOS (link to the next)
    "/etc/pki/tls/certs/ca-bundle.crt",
    // Fedora, RHEL, CentOS
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    // Alpine (LibreSSL and OpenSSL's default file), Arch and Fedora (links)
    "/etc/ssl/cert.pem",
    // openSUSE, SLES
    "/var/lib/ca-certificates/ca-bundle.pem",
    // openSUSE, SLES (link to the previous; what Go and older tools read there)
    "/etc/ssl/ca-bundle.pem",
    // Arch
    "/etc/ca-certificates/extracted/tls-ca-bundle.pem",
    // OpenELEC, LibreELEC (Go's list)
    "/etc/pki/tls/cacert.pem",
];

/// Java trust stores kept by the distribution (ca-certificates-java, update-ca-trust, ...) from its PEM
/// bundle. The JDKs' own `lib/security/cacerts` is a link to one of these on each of those distributions;
/// a JDK unpacked by hand keeps a store of its own, which the sandbox does not change.
pub const JAVA_KEYSTORES: &[&str] = &[
    // Debian, Ubuntu, Alpine, Arch
    "/etc/ssl/certs/java/cacerts",
    // Fedora, RHEL, CentOS (/etc/pki/java/cacerts links here)
    "/etc/pki/ca-trust/extracted/java/cacerts",
    // openSUSE, SLES
    "/var/lib/ca-certificates/java-cacerts",
];

/// Variables read by programs that do not use the distribution bundle by default. Unset, they
/// are pointed at the replaced distribution bundle (a full set of roots: most of them replace the
/// program's store rather than add to it).
const SET_WHEN_UNSET: &[&str] = &[
    // OpenSSL, LibreSSL and BoringSSL builds with their own OPENSSLDIR (python-build-standalone,
    // conda, static binaries), Go, Ruby, httpx (OpenAI/Anthropic SDKs), uv, rustls-native-certs.
    "SSL_CERT_FILE",
    // Python requests, and pip before 24.2: certifi's bundle otherwise.
    "REQUESTS_CA_BUNDLE",
    // curl builds with a bundle of their own; requests' fallback.
    "CURL_CA_BUNDLE",
    // Node and Bun: roots compiled into the binary, to which this file is added. It would be
    // enough for it to hold the CA alone, but only existing files can be replaced; the extra
    // distribution roots are ones every other program in the sandbox trusts anyway.
    "NODE_EXTRA_CA_CERTS",
    // Deno: its built-in Mozilla roots otherwise.
    "DENO_CERT",
    // AWS CLI and SDKs (botocore ships certifi).
    "AWS_CA_BUNDLE",
    // gcloud: its own bundle otherwise.
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    // httplib2 (google-api-python-client): its own cacerts.txt or certifi otherwise.
    "HTTPLIB2_CA_CERTS",
    // gRPC C core (Python grpcio, Ruby, PHP, C++) and grpc-js: bundled roots.pem otherwise.
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    // Hex (Elixir mix): ships its own store.
    "HEX_CACERTS_PATH",
    // Perl LWP: Mozilla::CA otherwise.
    "PERL_LWP_SSL_CA_FILE",
    // pip before 24.2 (and later ones without truststore) read certifi's bundle otherwise.
    "PIP_CERT",
];

/// Variables whose tool reads the distribution bundle (or node's store, which trusts the CA
/// through NODE_EXTRA_CA_CERTS) by default, and which override the tool's own configuration.
/// Setting them would replace a bundle the user configured (gitconfig `http.sslCAInfo`, pip.conf
/// `cert`, `.cargo/config` `http.cainfo`, `.npmrc` `cafile`, ...) and break their private servers
/// inside the sandbox, so they are only appended to when the caller set them.
const APPEND_IF_SET: &[&str] = &[
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
    // npm reads npm_config_* in any case; both spellings are common.
    "NPM_CONFIG_CAFILE",
    "npm_config_cafile",
    // Yarn 2/3 and 4.
    "YARN_CA_FILE_PATH",
    "YARN_HTTPS_CA_FILE_PATH",
    "BUNDLE_SSL_CA_CERT",
    "COMPOSER_CAFILE",
    "NIX_SSL_CERT_FILE",
    "JULIA_SSL_CA_ROOTS_PATH",
];

/// Every variable the plan looks at: `sandbox exec` sends the files these name, read with the caller's
/// own rights, so the daemon never opens a caller-chosen path as root.
pub fn variables() -> impl Iterator<Item = &'static str> {
    SET_WHEN_UNSET.iter().chain(APPEND_IF_SET).copied()
}

/// The caller's files, all together, are copied only up to this much: a distribution's bundle is about
/// 220 KiB, the request that carries them is at most `protocol::MAX_FRAME` (4 MiB), and the daemon should
/// not hold a user's large files in memory for them.
pub const MAX_CALLER_FILE: usize = 2 << 20;

/// What to change for one sandbox.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrustPlan {
    /// A path inside the sandbox and the full content the sandbox sees there instead.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// Variables to set in the command's environment, replacing any of the same name.
    pub env: Vec<(String, String)>,
    /// Java keystores the sandbox sees replaced by [`java_keystore`] of the first distribution bundle.
    pub java_keystores: Vec<PathBuf>,
}

/// The files and variables that make `ca_pem` trusted in one sandbox.
///
/// `system` reads a host file (None if absent). `caller_env` is the command's environment.
/// `caller_files` reads a file a caller's variable names; it must read it with the caller's
/// rights (the content becomes visible in the sandbox) and return None unless the path, symlinks
/// resolved, is a regular file outside /proc, /sys and /dev; `plan` itself refuses such paths
/// as written, and files that hold no certificate.
pub fn plan(
    ca_pem: &str,
    system: &dyn Fn(&Path) -> Option<Vec<u8>>,
    caller_env: &[(String, String)],
    caller_files: &dyn Fn(&Path) -> Option<Vec<u8>>,
) -> TrustPlan {
    let mut plan = TrustPlan::default();
    for bundle in SYSTEM_BUNDLES {
        let path = Path::new(bundle);
        if let Some(content) = system(path) {
            plan.files
                .push((path.to_owned(), with_ca(&content, ca_pem)));
        }
    }
    let bundle = plan.files.first().map(|(path, _)| path.clone());
    if bundle.is_some() {
        plan.java_keystores = JAVA_KEYSTORES
            .iter()
            .map(Path::new)
            .filter(|path| system(path).is_some())
            .map(Path::to_owned)
            .collect();
    }

    for &var in SET_WHEN_UNSET.iter().chain(APPEND_IF_SET) {
        // Like getenv: the first entry counts. An empty value means "unset" to these tools.
        let value = caller_env
            .iter()
            .find(|(name, _)| name == var)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty());
        match value {
            Some(value) => {
                // The caller chose this bundle: keep their choice and add the CA to it.
                let Some(path) = caller_path(value) else {
                    continue;
                };
                if plan.files.iter().any(|(known, _)| *known == path) {
                    continue;
                }
                if let Some(content) = caller_files(&path).filter(|c| is_pem_bundle(c)) {
                    plan.files.push((path, with_ca(&content, ca_pem)));
                }
            }
            None if SET_WHEN_UNSET.contains(&var) => {
                if let Some(bundle) = &bundle {
                    plan.env
                        .push((var.to_owned(), bundle.to_string_lossy().into_owned()));
                }
            }
            None => {}
        }
    }
    plan
}

/// A Java keystore (JKS: the format of the distributions' stores, which every Java release reads)
/// holding each certificate of the PEM `bundle`, then the CA, as trusted-certificate entries. It is
/// sealed with Java's default store password, "changeit": a program that opens the store with that
/// password checks the seal, and the default trust manager, which opens it with none, does not.
pub fn java_keystore(bundle: &[u8], ca_pem: &str, created_ms: u64) -> Vec<u8> {
    const MAGIC: u32 = 0xfeed_feed;
    const VERSION: u32 = 2;
    const TRUSTED_CERTIFICATE: u32 = 2;
    let system = pem_certificates(bundle);
    let ca = pem_certificates(ca_pem.as_bytes());
    let entries = system
        .iter()
        .enumerate()
        .map(|(index, der)| (format!("system-{index}"), der))
        .chain(ca.iter().map(|der| ("sandbox-ca".to_owned(), der)));

    let mut store = Vec::with_capacity(bundle.len());
    store.extend_from_slice(&MAGIC.to_be_bytes());
    store.extend_from_slice(&VERSION.to_be_bytes());
    store.extend_from_slice(&((system.len() + ca.len()) as u32).to_be_bytes());
    for (alias, der) in entries {
        store.extend_from_slice(&TRUSTED_CERTIFICATE.to_be_bytes());
        put_java_utf(&mut store, &alias);
        store.extend_from_slice(&created_ms.to_be_bytes());
        put_java_utf(&mut store, "X.509");
        store.extend_from_slice(&(der.len() as u32).to_be_bytes());
        store.extend_from_slice(der);
    }
    let mut seal = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in "changeit".encode_utf16() {
        seal.update(&unit.to_be_bytes());
    }
    seal.update(b"Mighty Aphrodite");
    seal.update(&store);
    store.extend_from_slice(seal.finish().as_ref());
    store
}

/// The DER of each CERTIFICATE block of a PEM bundle; a block that does not decode is left out. The
/// bundle is public, so the constant-time decoder of rustls's PEM reader would buy nothing here, and it
/// took half a millisecond of every sandbox's start.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = match std::str::from_utf8(pem) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(pem),
    };
    let mut certificates = Vec::new();
    let mut rest = &text[..];
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let Some(end) = body.find(END) else {
            break;
        };
        if let Some(der) = decode_base64_lines(&body[..end]) {
            certificates.push(der);
        }
        rest = &body[end + END.len()..];
    }
    certificates
}

/// PEM's base64 body, its lines joined.
fn decode_base64_lines(body: &str) -> Option<Vec<u8>> {
    let mut joined = Vec::with_capacity(body.len());
    for line in body.lines() {
        joined.extend_from_slice(line.trim().as_bytes());
    }
    BASE64.decode(joined).ok()
}

/// Java's `DataOutput.writeUTF` for ASCII text: a 16-bit length, then the bytes.
fn put_java_utf(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// `bundle` followed by the CA, each PEM block starting on a line of its own.
fn with_ca(bundle: &[u8], ca_pem: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bundle.len() + ca_pem.len() + 2);
    out.extend_from_slice(bundle);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(ca_pem.as_bytes());
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// Appending PEM to anything but a PEM bundle (a DER file, some unrelated file a variable was
/// pointed at) would corrupt it or alter a file the sandbox uses for something else.
fn is_pem_bundle(content: &[u8]) -> bool {
    content.len() <= MAX_CALLER_FILE
        && [
            &b"-----BEGIN CERTIFICATE-----"[..],
            b"-----BEGIN TRUSTED CERTIFICATE-----",
        ]
        .iter()
        .any(|marker| content.windows(marker.len()).any(|w| w == *marker))
}

/// The caller's path, normalized, if the lifecycle may mount over it: absolute (a relative one
/// depends on a working directory the mount cannot follow), without `..` (which could climb
/// anywhere), and not in the kernel's file systems, whose files are not the caller's to shadow.
pub fn caller_path(value: &str) -> Option<PathBuf> {
    let path = Path::new(value);
    if !path.is_absolute() {
        return None;
    }
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normal.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    let top = normal.components().nth(1)?;
    if ["proc", "sys", "dev"]
        .iter()
        .any(|kernel| top == Component::Normal(OsStr::new(kernel)))
    {
        return None;
    }
    Some(normal)
}

#[cfg(test)]
mod tests {
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
}
