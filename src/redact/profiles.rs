//! What each sandbox masks: every secret its profile's integrations inject (or hold: an AWS secret access
//! key), in every form it is injected in ([`ProfileRedaction`]), built when a sandbox starts, never per request; and the daemon's registry of them
//! ([`Redactions`]), which shares one between the sandboxes started with the same integrations and secrets
//! (500 sandboxes of one profile hold one automaton) and keeps them all up to date when a secret's value
//! changes ([`Redactions::value_changed`], the call the secrets the daemon mints make).
//!
//! The forms of a secret (see [`Forms::of`]): its value, and each header value that holds it as injected
//! (`Bearer sk-...`, basic auth's `Basic dXNlcjpwYXNz`), each with the base64 forms `Forms` derives. A header
//! value that holds two secrets is among the forms of both, so that a change of either renders it anew.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use zeroize::Zeroizing;

use super::{Forms, Needles, NeedlesError, Redaction};
use crate::config::{basic_credentials, BasicAuth, Integration, Secrets, Template};

/// What the sandboxes started with one list of integrations and one set of secrets (a profile, as one
/// config had it) mask.
pub struct ProfileRedaction {
    integrations: Vec<Integration>,
    secrets: Arc<Secrets>,
    redaction: Redaction,
}

impl fmt::Debug for ProfileRedaction {
    /// Names and counts only: the needles spell out the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.integrations.iter().map(|i| i.name.as_str()).collect();
        f.debug_struct("ProfileRedaction")
            .field("integrations", &names)
            .field("needles", &self.needles().len())
            .finish_non_exhaustive()
    }
}

/// One value an integration sends or holds for its requests.
enum Injection<'i> {
    Header(&'i Template),
    Basic(&'i BasicAuth),
    /// A secret of `aws_sigv4`, named: the session token goes as it is (`x-amz-security-token`), the secret
    /// access key never does, but both are the daemon's to keep.
    Aws(&'i str),
}

impl Injection<'_> {
    fn secret_names(&self) -> impl Iterator<Item = &str> {
        let (templates, held) = match self {
            Injection::Header(template) => ([Some(*template), None], None),
            Injection::Basic(basic) => ([Some(&basic.username), Some(&basic.password)], None),
            Injection::Aws(name) => ([None, None], Some(*name)),
        };
        templates
            .into_iter()
            .flatten()
            .flat_map(Template::secret_names)
            .chain(held)
    }

    /// The value as injected, with each secret's value from `value`; `None` when one has none.
    fn render<'v>(&self, value: &impl Fn(&str) -> Option<&'v str>) -> Option<Zeroizing<String>> {
        match self {
            Injection::Header(template) => template.render_with(value).ok().map(Zeroizing::new),
            Injection::Basic(basic) => {
                let user = Zeroizing::new(basic.username.render_with(value).ok()?);
                let password = Zeroizing::new(basic.password.render_with(value).ok()?);
                Some(Zeroizing::new(basic_credentials(&user, &password)))
            }
            Injection::Aws(name) => value(name).map(|held| Zeroizing::new(held.to_string())),
        }
    }
}

/// The secrets `injections` hold.
fn names_in<'i>(injections: impl Iterator<Item = Injection<'i>>) -> BTreeSet<String> {
    injections
        .flat_map(|injection| {
            injection
                .secret_names()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

impl ProfileRedaction {
    /// The needles in force; a stream keeps the ones it started with.
    pub fn needles(&self) -> Arc<Needles> {
        self.redaction.needles()
    }

    fn injections(&self) -> impl Iterator<Item = Injection<'_>> {
        self.integrations.iter().flat_map(|integration| {
            integration
                .headers
                .values()
                .map(Injection::Header)
                .chain(integration.basic_auth.iter().map(Injection::Basic))
                .chain(integration.aws_sigv4.iter().flat_map(|aws| {
                    std::iter::once(aws.secret_access_key.as_str())
                        .chain(aws.session_token.as_deref())
                        .map(Injection::Aws)
                }))
        })
    }

    /// Every secret its integrations inject.
    fn secret_names(&self) -> BTreeSet<String> {
        names_in(self.injections())
    }

    /// The secrets whose forms hold `name`'s value: those injected in one header value with it, and itself
    /// (none when it injects no such secret).
    fn sharing(&self, name: &str) -> BTreeSet<String> {
        names_in(
            self.injections()
                .filter(|injection| injection.secret_names().any(|n| n == name)),
        )
    }

    /// The forms of secret `name`, with each secret's value from `value`; `None` when it has none.
    fn forms<'v>(&self, name: &str, value: &impl Fn(&str) -> Option<&'v str>) -> Option<Forms> {
        let own = value(name)?;
        let injected: Vec<Zeroizing<String>> = self
            .injections()
            .filter(|injection| injection.secret_names().any(|n| n == name))
            .filter_map(|injection| injection.render(value))
            .collect();
        let injected: Vec<&[u8]> = injected.iter().map(|v| v.as_bytes()).collect();
        Some(Forms::of(own.as_bytes(), &injected))
    }
}

/// A secret whose value changed since the config was read (one the daemon mints), as last told.
struct Changed {
    current: Zeroizing<String>,
    /// The value it replaced, and until when that one may still come back in a response.
    previous: Option<(Zeroizing<String>, Instant)>,
}

/// The daemon's [`ProfileRedaction`]s, while a sandbox holds them.
#[derive(Default)]
pub struct Redactions {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    live: Vec<Weak<ProfileRedaction>>,
    changed: BTreeMap<String, Changed>,
}

impl State {
    /// Secret `name`'s value now: as last changed, else as the config's secrets had it.
    fn current<'s>(&'s self, secrets: &'s Secrets, name: &str) -> Option<&'s str> {
        match self.changed.get(name) {
            Some(changed) => Some(changed.current.as_str()),
            None => secrets.get(name).map(|value| value.expose()),
        }
    }
}

impl Redactions {
    /// What a sandbox with `integrations` and `secrets` masks: the one its like already hold, or one built
    /// now. An error (a secret too long to mask) means the sandbox must not start: its secrets would not
    /// be masked.
    pub fn for_sandbox(
        &self,
        integrations: &[Integration],
        secrets: &Arc<Secrets>,
    ) -> Result<Arc<ProfileRedaction>, NeedlesError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.live.retain(|weak| weak.strong_count() > 0);
        let shared = state.live.iter().filter_map(Weak::upgrade).find(|profile| {
            Arc::ptr_eq(&profile.secrets, secrets) && profile.integrations == integrations
        });
        if let Some(profile) = shared {
            return Ok(profile);
        }
        let profile = ProfileRedaction {
            integrations: integrations.to_vec(),
            secrets: Arc::clone(secrets),
            redaction: Redaction::default(),
        };
        let now = Instant::now();
        let current = |name: &str| state.current(secrets, name);
        for name in profile.secret_names() {
            // A value that was replaced a moment ago may still be injected (the change is made here before
            // the new value goes out), so it is masked here too until its time.
            let previous = state
                .changed
                .get(&name)
                .and_then(|changed| changed.previous.as_ref())
                .filter(|(_, until)| *until > now);
            if let Some((value, _)) = previous {
                let before = |n: &str| {
                    if n == name {
                        Some(value.as_str())
                    } else {
                        current(n)
                    }
                };
                if let Some(forms) = profile.forms(&name, &before) {
                    profile.redaction.set(&name, forms, now, now)?;
                }
            }
            if let Some(forms) = profile.forms(&name, &current) {
                let until = previous.map_or(now, |(_, until)| *until);
                profile.redaction.set(&name, forms, now, until)?;
            }
        }
        let profile = Arc::new(profile);
        state.live.push(Arc::downgrade(&profile));
        Ok(profile)
    }

    /// Secret `name`'s value is now `current`; `previous`, the value it replaced, may still come back in
    /// responses until `previous_expires_at`. Every live sandbox whose integrations inject `name` masks
    /// `current` from now on, and `previous` until then; a stream that began before keeps the needles it
    /// began with. Call it before the new value is injected anywhere; on an error it must not be (it
    /// would not be masked everywhere).
    pub fn value_changed(
        &self,
        name: &str,
        current: &str,
        previous: Option<&str>,
        previous_expires_at: Instant,
    ) -> Result<(), NeedlesError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.live.retain(|weak| weak.strong_count() > 0);
        let replaced = state.changed.insert(
            name.to_string(),
            Changed {
                current: Zeroizing::new(current.to_string()),
                previous: previous
                    .map(|value| (Zeroizing::new(value.to_string()), previous_expires_at)),
            },
        );
        let updated = state.update(name, previous_expires_at);
        if updated.is_err() {
            // Not in force: sandboxes started from now on mask what they did before. (Those updated
            // before the error mask the refused value too, which is no harm.)
            match replaced {
                Some(replaced) => state.changed.insert(name.to_string(), replaced),
                None => state.changed.remove(name),
            };
        }
        updated
    }
}

impl State {
    /// Masks secret `name`'s value now in force in every live sandbox whose integrations inject it.
    fn update(&self, name: &str, previous_expires_at: Instant) -> Result<(), NeedlesError> {
        let now = Instant::now();
        for profile in self.live.iter().filter_map(Weak::upgrade) {
            let value = |n: &str| self.current(&profile.secrets, n);
            // Its own forms, and those of each secret injected in one header value with it: their
            // header values hold it. Each one's forms before the change stay until `previous_expires_at`.
            for sharing in profile.sharing(name) {
                let forms = profile.forms(&sharing, &value).unwrap_or_default();
                profile
                    .redaction
                    .set(&sharing, forms, now, previous_expires_at)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
