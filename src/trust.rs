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

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

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

/// Caller files larger than this are not copied: no CA bundle comes near it, and the daemon
/// should not hold a user's large file in memory for them.
pub const MAX_CALLER_FILE: usize = 16 << 20;

/// What to change for one sandbox.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrustPlan {
    /// A path inside the sandbox and the full content the sandbox sees there instead.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// Variables to set in the command's environment, replacing any of the same name.
    pub env: Vec<(String, String)>,
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
fn caller_path(value: &str) -> Option<PathBuf> {
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
}
