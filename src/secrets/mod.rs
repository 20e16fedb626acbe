//! Minted secrets (issue 21): short-lived tokens the daemon makes from a root credential (a GitHub App's
//! key, an OAuth2 client or refresh token, a Google service account key) and refreshes itself, so that a
//! sandbox gets a working token and nobody rotates anything by hand.
//!
//! The flow, module by module:
//! - `definition`: what the config says (`*Spec`) and the same resolved against `[secrets]` (`Definition`).
//! - `github`, `oauth2`, `google`: each provider's token request and the meaning of its answer, pure;
//!   `jwt` signs their assertions; `exchange` is what they share (endpoint, request, response, outcome);
//!   `dates` reads the dates they send.
//! - `client`: sends one request to a token endpoint; `fetch` puts provider and client together.
//! - `schedule`: when to refresh and retry, pure; `state`: the rotated refresh token on disk.
//! - `store`: the slots the request path reads and the refresh tasks write (DESIGN step 5b).
//! - `value`: the locked, zeroed memory every token and root credential lives in.

pub mod client;
pub mod dates;
pub mod definition;
pub mod exchange;
pub mod fetch;
pub mod github;
pub mod google;
pub mod jwt;
pub mod oauth2;
pub mod schedule;
pub mod state;
pub mod store;
pub mod value;

#[cfg(test)]
pub(crate) mod testing;

pub use definition::{Definition, DefinitionError, MintSpec, SourceKind};
pub use fetch::{Fetcher, HttpFetcher};
pub use store::{Observer, Store, Unavailable};
pub use value::SecretValue;
