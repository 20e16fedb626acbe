//! What the relay is told about the connection it serves (`Scope`): the server name and port every request
//! must name, the integration's headers ready to add (`Injected`), what its responses are masked with, and
//! where each request's audit record goes.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use zeroize::Zeroizing;

use super::hpack;
use crate::audit::{PolledLog, Record};
use crate::config::{Integration, Secrets};
use crate::proxy::policy;
use crate::redact::profiles::ProfileRedaction;

/// What the relay needs to know about the connection it serves, and where its audit records go.
pub struct Scope {
    /// The TLS server name the client asked for, and the port it connected to: every request must name them.
    pub sni: String,
    pub port: u16,
    /// The integration's headers, HPACK-encoded (never indexed), and their names in lower case; or why
    /// they cannot be made (a secret that is not loaded).
    pub injected: Result<Injected, String>,
    /// What responses are masked with (each request takes the needles in force when it starts); `None`
    /// when the integration says `redact = false`.
    pub redaction: Option<Arc<ProfileRedaction>>,
    /// Filled in per request (method, host, path, status, bytes, verdict), counted and logged.
    pub record: Record,
    pub log: PolledLog,
    /// Told of each request's record as it is logged (the sandbox's byte counts).
    pub counted: Box<dyn Fn(&Record) + Send + Sync>,
}

pub struct Injected {
    pub names: Vec<String>,
    pub block: Zeroizing<Vec<u8>>,
}

impl Injected {
    /// The integration's headers as one HPACK block (the secret ones never indexed), with their names; or
    /// why they cannot be made (a secret that is not loaded). Where responses are masked, the request asks
    /// for a body the relay can scan: `Accept-Encoding: identity`, in place of the client's.
    pub fn for_integration(
        integration: &Integration,
        secrets: &Secrets,
    ) -> Result<Injected, String> {
        let mut headers = http::HeaderMap::new();
        policy::inject(&mut headers, integration, secrets)?;
        if integration.redact {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let mut block = Zeroizing::new(Vec::new());
        let mut names = Vec::new();
        for (name, value) in &headers {
            let sensitive = value.is_sensitive();
            hpack::encode_field(
                name.as_str().as_bytes(),
                value.as_bytes(),
                sensitive,
                &mut block,
            );
            names.push(name.as_str().to_string());
        }
        names.dedup();
        Ok(Injected { names, block })
    }
}

impl Scope {
    /// Counts and logs the record of a request that ended.
    #[inline]
    pub(super) fn finished(&mut self, record: Record) {
        (self.counted)(&record);
        self.log.log(record);
    }

    /// The authority every request gets upstream: the server name, with the port unless it is 443.
    pub(super) fn authority(&self) -> String {
        if self.port == 443 {
            self.sni.clone()
        } else {
            format!("{}:{}", self.sni, self.port)
        }
    }
}
