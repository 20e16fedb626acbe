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
mod tests;
