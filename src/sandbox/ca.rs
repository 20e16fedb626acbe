//! One certificate authority per sandbox (DESIGN steps 2 and 4, invariant 5): its key, its
//! certificate (which `trust` installs inside that one sandbox), the leaf certificates it mints for
//! the SNI names the TLS listener terminates, and the rustls `ServerConfig` that serves them.
//!
//! The private keys exist only in this process's memory: they are generated here, never serialized
//! to disk or logged, and their PKCS#8 copies are wiped when the CA is dropped. A second CA, even for
//! the same sandbox id, has a fresh key, so no sandbox trusts another's leaves.
//!
//! Name constraints make the CA useless outside its integrations' hosts even for the clients that
//! trust it: an exact host `api.example.com` is the permitted DNS subtree `api.example.com` plus the
//! excluded subtree `.api.example.com` (its subdomains; a bare RFC 5280 subtree would allow them);
//! a wildcard `*.example.com` is the permitted subtree `.example.com`, which OpenSSL, GnuTLS,
//! rustls-webpki, NSS and Go all read as "strictly below example.com" (matching the config's
//! wildcard, which does not match `example.com` itself). All IPv4 and IPv6 addresses are excluded,
//! so no leaf for an IP address can validate.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use zeroize::Zeroize;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
/// Certificates start an hour in the past so that a client whose clock lags a little (a VM that
/// has just resumed, a program in a time namespace) still accepts them.
const BACKDATE: u64 = HOUR;
/// Long enough for any realistic sandbox (agent runs last hours, at most days); short enough that a
/// CA certificate copied out of a sandbox into some trust store stops mattering soon. Its key never
/// leaves the daemon, so the length mostly bounds that mistake. A sandbox that lives longer loses
/// interception (handshakes fail, nothing leaks): `leaf` then returns [`CaError::Expired`].
const CA_LIFETIME: u64 = 30 * DAY;
const LEAF_LIFETIME: u64 = 7 * DAY;
/// A cached leaf is replaced this long before it expires, so no handshake gets one about to expire.
const LEAF_REFRESH_BEFORE: u64 = DAY;
/// Bounds the memory a sandbox can make the daemon spend by asking for many names under a wildcard.
const CACHE_CAPACITY: usize = 256;
/// The permitted subtree of a CA with no hosts: `.invalid` is reserved (RFC 6761), so nothing real
/// can be below it.
const NOTHING_PERMITTED: &str = "invalid";
/// X.509 limits commonName to 64 characters; longer names go only in the subjectAltName.
const MAX_COMMON_NAME: usize = 64;

/// Why a CA or a leaf could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid host {host:?} for a sandbox CA: {reason}")]
    BadHost { host: String, reason: &'static str },
    #[error(
        "invalid sandbox id {0:?}: it must be non-empty and fit in a 64-character common name"
    )]
    BadSandboxId(String),
    #[error("{0:?} is not a host this sandbox's CA issues certificates for")]
    NotPermitted(String),
    #[error("this sandbox's CA has expired (it lives 30 days); start a new sandbox")]
    Expired,
    #[error("the system clock is before 1970")]
    Clock,
    #[error("the system random number generator failed")]
    Random,
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("setting up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A sandbox's certificate authority. Dropping it wipes the keys; connections already set up keep
/// what they need until they end.
pub struct SandboxCa {
    sandbox_id: String,
    cert_pem: String,
    minter: Arc<Minter>,
    server_config: Arc<ServerConfig>,
}

impl SandboxCa {
    /// A new CA for `sandbox_id` that can issue leaves only for `permitted` hosts (exact names or
    /// `*.suffix`, as in the config). With no hosts it can issue nothing.
    pub fn new(sandbox_id: &str, permitted: &[String]) -> Result<SandboxCa, CaError> {
        let permits = permitted
            .iter()
            .map(|host| Permit::parse(host))
            .collect::<Result<Vec<_>, _>>()?;
        let common_name = format!("sandbox {sandbox_id} CA");
        if sandbox_id.is_empty() || common_name.len() > MAX_COMMON_NAME {
            return Err(CaError::BadSandboxId(sandbox_id.to_owned()));
        }
        let now = unix_now()?;
        let not_after = now + CA_LIFETIME;

        let mut params = CertificateParams::default();
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(name_constraints(&permits));
        set_validity(&mut params, now.saturating_sub(BACKDATE), not_after);
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca_cert = params.self_signed(&ca_key)?;

        // One leaf key per CA: every leaf serves the same sandbox and lives in the same memory as
        // the CA key, so a key per leaf would isolate nothing, while sharing one makes minting a
        // single signature and lets all cached leaves share one rustls signing key.
        let mut leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        // Its PKCS#8 bytes are wiped before the error, if any, is returned.
        let leaf_signer = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(leaf_key.serialized_der()),
        ));
        let leaf_public = LeafPublicKey(leaf_key.public_key_raw().to_vec());
        leaf_key.zeroize();

        let minter = Arc::new(Minter {
            issuer_params: params,
            ca_key,
            ca_der: ca_cert.der().clone(),
            ca_not_after: not_after,
            leaf_public,
            leaf_signer: leaf_signer?,
            permits,
            cache: Mutex::new(Cache::default()),
        });
        Ok(SandboxCa {
            sandbox_id: sandbox_id.to_owned(),
            cert_pem: ca_cert.pem(),
            server_config: server_config(Arc::clone(&minter))?,
            minter,
        })
    }

    /// The CA certificate, PEM, ending in a newline.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.minter.ca_der
    }

    /// Whether this CA issues leaves for `host` (case-insensitive, one trailing dot ignored).
    pub fn permits(&self, host: &str) -> bool {
        normalize(host).is_ok_and(|name| self.minter.permits(&name))
    }

    /// The chain [leaf, CA] and key for `sni`, minted on first use and cached.
    pub fn leaf(&self, sni: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.minter.leaf(sni, unix_now()?)
    }

    /// TLS 1.2 and 1.3, ALPN h2 and http/1.1, certificates from [`SandboxCa::leaf`] for the
    /// ClientHello's SNI (no SNI: no certificate, the handshake fails). Built once with the CA.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }
}

impl fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxCa")
            .field("sandbox_id", &self.sandbox_id)
            .field("minter", &self.minter)
            .finish_non_exhaustive()
    }
}

/// What signs leaves; shared with the certificate resolver of the `ServerConfig`.
struct Minter {
    /// The CA's own parameters: rcgen takes the issuer's name and key identifier from them.
    issuer_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    ca_not_after: u64,
    leaf_public: LeafPublicKey,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    permits: Vec<Permit>,
    cache: Mutex<Cache>,
}

impl Drop for Minter {
    fn drop(&mut self) {
        // The key's PKCS#8 bytes would otherwise stay in freed heap memory; aws-lc wipes its own
        // copy of the key when it frees it.
        self.ca_key.zeroize();
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.lock_cache().leaves.len();
        f.debug_struct("Minter")
            .field("permits", &self.permits)
            .field("ca_not_after", &self.ca_not_after)
            .field("cached_leaves", &cached)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    leaves: HashMap<String, Cached>,
    /// Names in the order they were first cached, to evict the oldest.
    order: VecDeque<String>,
}

struct Cached {
    key: Arc<CertifiedKey>,
    refresh_at: u64,
}

impl Minter {
    fn permits(&self, name: &str) -> bool {
        self.permits.iter().any(|permit| permit.permits(name))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache is consistent after every statement, so a panic elsewhere cannot spoil it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, name: &str, now: u64) -> Option<Arc<CertifiedKey>> {
        self.lock_cache()
            .leaves
            .get(name)
            .filter(|cached| now < cached.refresh_at)
            .map(|cached| Arc::clone(&cached.key))
    }

    fn leaf(&self, sni: &str, now: u64) -> Result<Arc<CertifiedKey>, CaError> {
        let name = normalize(sni)?;
        if !self.permits(&name) {
            return Err(CaError::NotPermitted(name));
        }
        if let Some(key) = self.cached(&name, now) {
            return Ok(key);
        }
        // No lock while signing: two first handshakes for one name may both mint, and the first
        // to store wins, so every caller gets the same leaf.
        let common_name = (name.len() <= MAX_COMMON_NAME).then_some(name.as_str());
        let (key, refresh_at) = self.mint(
            SanType::DnsName(name.as_str().try_into()?),
            common_name,
            now,
        )?;
        let mut cache = self.lock_cache();
        if let Some(stored) = cache.leaves.get(&name).filter(|c| now < c.refresh_at) {
            return Ok(Arc::clone(&stored.key));
        }
        let fresh = Cached {
            key: Arc::clone(&key),
            refresh_at,
        };
        if cache.leaves.insert(name.clone(), fresh).is_none() {
            cache.order.push_back(name);
            while cache.order.len() > CACHE_CAPACITY {
                if let Some(oldest) = cache.order.pop_front() {
                    cache.leaves.remove(&oldest);
                }
            }
        }
        Ok(key)
    }

    /// Signs a leaf for `san` without checking it against the permits (`leaf` does that; tests
    /// use this to make leaves the name constraints must reject). Returns it with the time it
    /// should be replaced.
    fn mint(
        &self,
        san: SanType,
        common_name: Option<&str>,
        now: u64,
    ) -> Result<(Arc<CertifiedKey>, u64), CaError> {
        if now >= self.ca_not_after {
            return Err(CaError::Expired);
        }
        // A leaf never outlives its CA; one cut short by the CA's end is kept until then, since a
        // new one could not last longer.
        let not_after = (now + LEAF_LIFETIME).min(self.ca_not_after);
        let refresh_at = if not_after == self.ca_not_after {
            not_after
        } else {
            not_after - LEAF_REFRESH_BEFORE
        };
        let mut params = CertificateParams::default();
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        if let Some(common_name) = common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
        }
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // OpenSSL's strict mode (Python 3.13's default) rejects a leaf without it.
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now.saturating_sub(BACKDATE), not_after);
        let issuer = Issuer::from_params(&self.issuer_params, &self.ca_key);
        let cert = params.signed_by(&self.leaf_public, &issuer)?;
        let key = CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            Arc::clone(&self.leaf_signer),
        );
        Ok((Arc::new(key), refresh_at))
    }
}

/// The leaf key's public half, all rcgen needs to put it in a certificate.
struct LeafPublicKey(Vec<u8>);

impl PublicKeyData for LeafPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

#[derive(Debug)]
struct Resolver(Arc<Minter>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI there is no name to mint for, and any other certificate would be wrong.
        let sni = client_hello.server_name()?;
        self.0.leaf(sni, unix_now().ok()?).ok()
    }
}

fn server_config(minter: Arc<Minter>) -> Result<Arc<ServerConfig>, CaError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(minter)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// rustls's default provider, named explicitly so that this does not depend on a process-wide
/// default being installed (or panic if two providers are compiled in).
fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Top bit clear: the DER integer is positive. Next bit set: no leading zero byte is dropped,
    // so every serial is 16 bytes with 126 random bits (CA/B asks for at least 64).
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from(bytes.to_vec()))
}

fn unix_now() -> Result<u64, CaError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .map_err(|_| CaError::Clock)
}

fn set_validity(params: &mut CertificateParams, from: u64, to: u64) {
    // rcgen takes `time` dates; adding to its own epoch value spares a direct `time` dependency.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from);
    params.not_after = epoch + Duration::from_secs(to);
}

/// A host the CA may issue for, normalized like the config's `HostPattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Permit {
    Exact(String),
    /// Any name strictly below this suffix (config `*.suffix`), at any depth.
    Below(String),
}

impl Permit {
    fn parse(host: &str) -> Result<Permit, CaError> {
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let (below, base) = match name.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, name.as_str()),
        };
        check_name(base).map_err(|reason| CaError::BadHost {
            host: host.to_owned(),
            reason,
        })?;
        Ok(if below {
            Permit::Below(base.to_owned())
        } else {
            Permit::Exact(name)
        })
    }

    fn permits(&self, name: &str) -> bool {
        match self {
            Permit::Exact(exact) => name == exact,
            Permit::Below(suffix) => is_strictly_below(name, suffix),
        }
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    // DnsName accepts one trailing dot; ours was stripped already, so another means an empty label.
    if name.ends_with('.') {
        return Err("empty label");
    }
    DnsName::try_from(name).map(|_| ()).map_err(|_| {
        "not a DNS name (letters, digits, '-' and '_' in labels of at most 63; not an IP address; \
         '*' only as the whole first label)"
    })
}

/// Lowercase, without its trailing dot, and a valid DNS name.
fn normalize(host: &str) -> Result<String, CaError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    check_name(name).map_err(|reason| CaError::BadHost {
        host: host.to_owned(),
        reason,
    })?;
    Ok(name.to_ascii_lowercase())
}

fn is_strictly_below(name: &str, ancestor: &str) -> bool {
    let (name, ancestor) = (name.as_bytes(), ancestor.as_bytes());
    name.len() > ancestor.len() + 1
        && name.ends_with(ancestor)
        && name[name.len() - ancestor.len() - 1] == b'.'
}

fn name_constraints(permits: &[Permit]) -> NameConstraints {
    let mut permitted = BTreeSet::new();
    let mut excluded = BTreeSet::new();
    for permit in permits {
        match permit {
            Permit::Exact(name) => {
                permitted.insert(name.clone());
                // Excluding the subdomains is what makes the subtree exact; skip it when another
                // host lies below this one, or the exclusion (which wins) would cut that host out.
                if !reaches_below(name, permits) {
                    excluded.insert(format!(".{name}"));
                }
            }
            Permit::Below(suffix) => {
                permitted.insert(format!(".{suffix}"));
            }
        }
    }
    if permitted.is_empty() {
        permitted.insert(NOTHING_PERMITTED.to_owned());
    }
    NameConstraints {
        permitted_subtrees: permitted.into_iter().map(GeneralSubtree::DnsName).collect(),
        excluded_subtrees: excluded
            .into_iter()
            .map(GeneralSubtree::DnsName)
            .chain([
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ])
            .collect(),
    }
}

/// Whether some permit allows a name strictly below `name`.
fn reaches_below(name: &str, permits: &[Permit]) -> bool {
    permits.iter().any(|permit| match permit {
        Permit::Exact(other) => is_strictly_below(other, name),
        Permit::Below(suffix) => {
            suffix == name || is_strictly_below(suffix, name) || is_strictly_below(name, suffix)
        }
    })
}

#[cfg(test)]
mod tests;
