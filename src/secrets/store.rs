//! The minted secrets the daemon holds: one slot per secret, which the request path reads (`value`, never
//! waiting) and a refresh task per slot writes, driven by `schedule`. DESIGN step 5b.
//!
//! - A slot's task is the only one that fetches for it, so its fetches never overlap; fetches of one secret
//!   name are also serialized across reloads (a replaced slot's fetch in flight finishes first), since two
//!   refreshes spending one refresh token lose the grant, and a token fetched for a replaced slot is
//!   dropped unused.
//! - A rotated refresh token is saved to its state file before the access token that came with it is
//!   published.
//! - An upstream's 401 starts one fetch (`refresh_now`), however many requests report it: only a report
//!   about the current token counts, and a fetch already asked for or running absorbs the rest.
//! - A request that finds no valid token while a fetch is running (the first one, typically) may wait for
//!   it (`wait_value`), bounded; otherwise it is refused at once with the reason (the daemon's 503).
//! - The `Observer` hears of every fetch (audit log kind `token`, never a value) and of every change of
//!   value before the new value is handed out (redaction: it masks the new value, and the previous one
//!   while that is still valid upstream); a change it refuses is not used.
//!
//! Values are `Arc<SecretValue>`: locked, zeroed memory shared with the requests using it, freed when the
//! last of them is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::secrets::definition::{Definition, Minter, SourceKind};
use crate::secrets::exchange::{Failure, FailureKind, Fetched};
use crate::secrets::fetch::Fetcher;
use crate::secrets::oauth2::Grant;
use crate::secrets::schedule;
use crate::secrets::state::StateFile;
use crate::secrets::value::SecretValue;

/// How long a request waits for a token being fetched, for the wiring to use: the endpoint client's own
/// timeout, so that a request does not give up on a fetch that may still succeed.
pub const WAIT_FOR_TOKEN: Duration = crate::secrets::client::TIMEOUT;

/// The state `sandbox secrets` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A valid token, and no fetch running.
    Ok,
    /// A fetch is running (or about to, for a new secret).
    Refreshing,
    /// The token is past its usable time and the fetches since failed; retrying.
    Expired,
    /// No valid token, and the last fetch was refused (or no fetch ever succeeded).
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Refreshing => "refreshing",
            State::Expired => "expired",
            State::Error => "error",
        }
    }
}

/// One minted secret, for `sandbox secrets`. Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub source: SourceKind,
    pub endpoint_host: String,
    pub state: State,
    /// Until the token may no longer be handed out (its expiry less the unusable tail).
    pub usable_for: Option<Duration>,
    pub expires_at: Option<SystemTime>,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// When the next fetch is due (refresh or retry), unless one is running.
    pub next_fetch_in: Option<Duration>,
}

/// Why there is no token to inject: the text of the daemon's 503, which names the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret \"{secret}\" has no valid token: {reason}")]
pub struct Unavailable {
    pub secret: String,
    pub reason: String,
}

/// What `refresh_now` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshNow {
    Started,
    /// A fetch is already asked for or running; it will replace the token.
    AlreadyFetching,
    /// The rejected token is no longer the current one: a newer one is in place already.
    NotCurrent,
    /// The last fetches failed, and their retry schedule stands.
    Retrying,
    /// A 401 forced a fetch less than `schedule::FORCED_REFRESH_INTERVAL` ago.
    TooSoon,
    /// No minted secret by that name.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchVerdict {
    Minted,
    Error,
}

/// One token fetch, for the audit log (kind `token`) and the daemon log. Never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchEvent {
    pub secret: String,
    pub source: SourceKind,
    pub endpoint_host: String,
    pub status: Option<u16>,
    pub verdict: FetchVerdict,
    pub expires_at: Option<SystemTime>,
    /// Why it failed; or, for a token minted whose rotated refresh token could not be saved, that.
    pub error: Option<String>,
    pub duration: Duration,
}

/// A minted secret's value changed.
#[derive(Debug)]
pub struct ValueChange<'a> {
    pub secret: &'a str,
    /// The value handed out from now on; None when a reload removed or replaced the secret.
    pub current: Option<&'a Arc<SecretValue>>,
    /// The value it replaces, still valid upstream until `previous_expires_at`: keep masking it.
    pub previous: Option<&'a Arc<SecretValue>>,
    pub previous_expires_at: Option<SystemTime>,
}

/// What the store tells the rest of the daemon. Called from the refresh tasks, outside any lock of the
/// store; it should not block.
pub trait Observer: Send + Sync + 'static {
    fn fetched(&self, event: &FetchEvent);
    /// Redaction's hook (`Redactions::value_changed`). Called before the new value is handed out to any
    /// request; an error (redaction could not take it) keeps the new value from being used: the store
    /// goes on with the token it had and retries the fetch as a transient failure. Its result is moot
    /// when a reload removed the secret (`current` is None).
    fn value_changed(&self, change: &ValueChange<'_>) -> Result<(), String>;
}

/// The minted secrets. Cheap to clone; the refresh tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    /// Per secret name, across reloads: see `RefreshGrant`.
    grants: Mutex<HashMap<String, Arc<tokio::sync::Mutex<RefreshGrant>>>>,
    fetcher: Arc<dyn Fetcher>,
    observer: Arc<dyn Observer>,
}

struct Slot {
    definition: Arc<Definition>,
    state: Mutex<SlotState>,
    /// Wakes the task: a forced refresh, a reload retrying a failed secret.
    wake: Notify,
    /// Counts finished fetches; `wait_value` waits on it.
    fetched: watch::Sender<u64>,
    stop: CancellationToken,
}

struct SlotState {
    token: Option<Token>,
    /// A fetch is running, or (for a new slot) about to.
    fetching: bool,
    /// `refresh_now` asked for a fetch the task has not started yet.
    forced: bool,
    last_forced: Option<Instant>,
    next_fetch: Instant,
    /// Failed fetches since the last success, and the kind of the last one.
    failures: u32,
    failing: Option<FailureKind>,
    last_refresh: Option<SystemTime>,
    last_error: Option<(String, SystemTime)>,
}

struct Token {
    value: Arc<SecretValue>,
    usable_until: Instant,
    expires_at: SystemTime,
}

/// One per secret name, kept across reloads, and held (the async mutex) for the whole of each fetch of
/// that secret, so that no two fetches of it overlap, even those of a slot a reload replaced. For an
/// OAuth2 refresh grant it also holds the chain in memory: the refresh token rotated to last, and the
/// configured one it descends from.
#[derive(Default)]
struct RefreshGrant {
    rotated: Option<(SecretValue, Arc<SecretValue>)>,
}

impl Store {
    /// An empty store; `reload` gives it its secrets. Its tasks run on the current tokio runtime.
    pub fn new(fetcher: Arc<dyn Fetcher>, observer: Arc<dyn Observer>) -> Store {
        Store {
            inner: Arc::new(Inner {
                slots: RwLock::new(HashMap::new()),
                grants: Mutex::new(HashMap::new()),
                fetcher,
                observer,
            }),
        }
    }

    /// The current token, if a valid one exists. Never waits (beyond the slot's lock, held only to read
    /// or write a few fields).
    pub fn value(&self, name: &str) -> Result<Arc<SecretValue>, Unavailable> {
        let slot = self.slot(name)?;
        let state = lock(&slot.state);
        usable(&state, Instant::now()).ok_or_else(|| unavailable(name, &state))
    }

    /// The current token, or, if a fetch is running, the token it brings, waiting at most `timeout`.
    /// Without a valid token and with no fetch running (the endpoint is failing and a retry is
    /// scheduled), it answers at once, as `value` does.
    pub async fn wait_value(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Arc<SecretValue>, Unavailable> {
        let slot = self.slot(name)?;
        // Subscribed before looking, so that a fetch ending in between is not missed.
        let mut fetched = slot.fetched.subscribe();
        // Bounded, so that any timeout a caller passes is a valid deadline.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(24 * 3600));
        loop {
            {
                let state = lock(&slot.state);
                if let Some(value) = usable(&state, Instant::now()) {
                    return Ok(value);
                }
                if !state.fetching && !state.forced {
                    return Err(unavailable(name, &state));
                }
            }
            match tokio::time::timeout_at(deadline, fetched.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Unavailable {
                        secret: name.to_owned(),
                        reason: "the secret was removed by a reload".into(),
                    })
                }
                Err(_) => {
                    return Err(Unavailable {
                        secret: name.to_owned(),
                        reason: format!(
                            "no token came within {}s; the token endpoint is slow",
                            timeout.as_secs_f32()
                        ),
                    })
                }
            }
        }
    }

    /// An upstream answered 401 to a request that carried `rejected`: fetch a new token now, unless one is
    /// on its way or `rejected` is no longer the current token. Never waits.
    pub fn refresh_now(&self, name: &str, rejected: &Arc<SecretValue>) -> RefreshNow {
        let Ok(slot) = self.slot(name) else {
            return RefreshNow::Unknown;
        };
        let now = Instant::now();
        let mut state = lock(&slot.state);
        if state.fetching || state.forced {
            return RefreshNow::AlreadyFetching;
        }
        if !state
            .token
            .as_ref()
            .is_some_and(|token| Arc::ptr_eq(&token.value, rejected))
        {
            return RefreshNow::NotCurrent;
        }
        if state.failures > 0 {
            return RefreshNow::Retrying;
        }
        if !schedule::may_force(state.last_forced, now) {
            return RefreshNow::TooSoon;
        }
        state.forced = true;
        state.last_forced = Some(now);
        drop(state);
        slot.wake.notify_one();
        RefreshNow::Started
    }

    /// Every minted secret, by name.
    pub fn status(&self) -> Vec<Status> {
        let slots: Vec<Arc<Slot>> = read(&self.inner.slots).values().cloned().collect();
        let now = Instant::now();
        let mut statuses: Vec<Status> = slots
            .iter()
            .map(|slot| {
                let state = lock(&slot.state);
                let definition = &slot.definition;
                let usable = usable(&state, now).is_some();
                Status {
                    name: definition.name.clone(),
                    source: definition.kind(),
                    endpoint_host: definition.endpoint().host().to_owned(),
                    state: state_of(&state, usable),
                    usable_for: state
                        .token
                        .as_ref()
                        .map(|token| token.usable_until.saturating_duration_since(now)),
                    expires_at: state.token.as_ref().map(|token| token.expires_at),
                    last_refresh: state.last_refresh,
                    last_error: state.last_error.as_ref().map(|(error, _)| error.clone()),
                    last_error_at: state.last_error.as_ref().map(|(_, at)| *at),
                    next_fetch_in: (!state.fetching && !state.forced)
                        .then(|| state.next_fetch.saturating_duration_since(now)),
                }
            })
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// Takes a new set of definitions (the first one at start). A secret whose definition is unchanged
    /// keeps its slot and token (and, if failing, retries at once: the operator may have fixed what was
    /// wrong); a new or changed one gets a new slot, fetched at once; a removed one is dropped.
    pub fn reload(&self, definitions: Vec<Definition>) {
        let mut removed = Vec::new();
        {
            let mut slots = write(&self.inner.slots);
            let mut old = std::mem::take(&mut *slots);
            for definition in definitions {
                let name = definition.name.clone();
                match old.remove(&name) {
                    Some(slot) if *slot.definition == definition => {
                        let mut state = lock(&slot.state);
                        if state.failures > 0 && !state.fetching {
                            state.next_fetch = Instant::now();
                            drop(state);
                            slot.wake.notify_one();
                        } else {
                            drop(state);
                        }
                        slots.insert(name, slot);
                    }
                    replaced => {
                        removed.extend(replaced);
                        let slot = self.start(definition);
                        slots.insert(name, slot);
                    }
                }
            }
            removed.extend(old.into_values());
        }
        for slot in removed {
            slot.stop.cancel();
            let state = lock(&slot.state);
            if let Some(token) = &state.token {
                let (value, expires_at) = (token.value.clone(), token.expires_at);
                drop(state);
                // Nothing is handed out in its place, so there is nothing to hold back on an error.
                let _ = self.inner.observer.value_changed(&ValueChange {
                    secret: &slot.definition.name,
                    current: None,
                    previous: Some(&value),
                    previous_expires_at: Some(expires_at),
                });
            }
        }
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, Unavailable> {
        read(&self.inner.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| Unavailable {
                secret: name.to_owned(),
                reason: "it is not a minted secret".into(),
            })
    }

    /// A new slot for `definition`, and its task.
    fn start(&self, definition: Definition) -> Arc<Slot> {
        let grant = lock(&self.inner.grants)
            .entry(definition.name.clone())
            .or_default()
            .clone();
        let slot = Arc::new(Slot {
            definition: Arc::new(definition),
            state: Mutex::new(SlotState {
                token: None,
                fetching: true,
                forced: false,
                last_forced: None,
                next_fetch: Instant::now(),
                failures: 0,
                failing: None,
                last_refresh: None,
                last_error: None,
            }),
            wake: Notify::new(),
            fetched: watch::Sender::new(0),
            stop: CancellationToken::new(),
        });
        tokio::spawn(refresh_task(
            slot.clone(),
            grant,
            self.inner.fetcher.clone(),
            self.inner.observer.clone(),
        ));
        slot
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for slot in read(&self.slots).values() {
            slot.stop.cancel();
        }
    }
}

/// A slot's life: wait until a fetch is due (its refresh time, a retry, a forced refresh), fetch, publish.
/// A fetch that has begun is finished even if the slot is stopped meanwhile: its rotated refresh token
/// must be saved, and the fetch is accounted for.
async fn refresh_task(
    slot: Arc<Slot>,
    grant: Arc<tokio::sync::Mutex<RefreshGrant>>,
    fetcher: Arc<dyn Fetcher>,
    observer: Arc<dyn Observer>,
) {
    loop {
        loop {
            let due = {
                let state = lock(&slot.state);
                (!state.forced).then_some(state.next_fetch)
            };
            match due {
                Some(at) if Instant::now() < at => {
                    tokio::select! {
                        _ = slot.stop.cancelled() => return,
                        _ = tokio::time::sleep_until(at) => {}
                        _ = slot.wake.notified() => {}
                    }
                }
                _ => break,
            }
            if slot.stop.is_cancelled() {
                return;
            }
        }
        {
            let mut state = lock(&slot.state);
            state.fetching = true;
            state.forced = false;
        }
        let started = Instant::now();
        let (fetched, saving) = fetch(&slot.definition, &grant, &*fetcher).await;
        publish(&slot, fetched, saving, started, &*observer);
        if slot.stop.is_cancelled() {
            return;
        }
    }
}

/// One fetch, under the secret's grant lock: the refresh token to spend chosen (rotated in memory, else
/// saved in the state file, else configured), and a rotated one saved before returning. The second value
/// is why a rotated refresh token could not be saved, if it could not.
async fn fetch(
    definition: &Definition,
    grant: &tokio::sync::Mutex<RefreshGrant>,
    fetcher: &dyn Fetcher,
) -> (Fetched, Option<String>) {
    let mut grant = grant.lock().await;
    let Some((configured, state_file)) = refresh_grant(definition) else {
        return (fetcher.fetch(definition, None).await, None);
    };
    let state = StateFile::new(state_file.clone());
    let current = match &grant.rotated {
        Some((from, token)) if from == configured => token.clone(),
        _ => {
            let saved = state
                .as_ref()
                .map_err(ToString::to_string)
                .and_then(|state| state.load(configured).map_err(|error| error.to_string()));
            let current = match saved {
                Ok(Some(token)) => Arc::new(token),
                Ok(None) => Arc::new(copy(configured)),
                Err(error) => {
                    tracing::warn!(secret = %definition.name, %error, "cannot read the saved refresh token; spending the configured one");
                    Arc::new(copy(configured))
                }
            };
            grant.rotated = Some((copy(configured), current.clone()));
            current
        }
    };
    let mut fetched = fetcher.fetch(definition, Some(&current)).await;
    let mut saving = None;
    if let Ok(minted) = &mut fetched {
        if let Some(rotated) = minted.refresh_token.take() {
            // The server spent `current`: the new one is the only one that works, saved or not.
            let rotated = Arc::new(rotated);
            if let Err(error) = state
                .as_ref()
                .map_err(ToString::to_string)
                .and_then(|state| state.save(configured, &rotated).map_err(|e| e.to_string()))
            {
                tracing::error!(secret = %definition.name, %error, "cannot save the rotated refresh token; a restarted daemon would spend one the server no longer takes");
                saving = Some(format!(
                    "the rotated refresh token could not be saved ({error}); a restart would need a new refresh token"
                ));
            }
            grant.rotated = Some((copy(configured), rotated));
        }
    }
    (fetched, saving)
}

/// The configured refresh token and state file of an OAuth2 refresh grant.
fn refresh_grant(definition: &Definition) -> Option<(&SecretValue, &std::path::PathBuf)> {
    match &definition.minter {
        Minter::Oauth2(client) => match &client.grant {
            Grant::RefreshToken {
                configured,
                state_file,
            } => Some((configured, state_file)),
            Grant::ClientCredentials => None,
        },
        _ => None,
    }
}

/// Records a fetch's outcome in the slot, schedules the next, and tells the observer. A token fetched
/// for a slot a reload stopped meanwhile is dropped unused (its rotated refresh token is saved already).
fn publish(
    slot: &Slot,
    fetched: Fetched,
    saving: Option<String>,
    started: Instant,
    observer: &dyn Observer,
) {
    let definition = &slot.definition;
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut event = FetchEvent {
        secret: definition.name.clone(),
        source: definition.kind(),
        endpoint_host: definition.endpoint().host().to_owned(),
        status: None,
        verdict: FetchVerdict::Minted,
        expires_at: None,
        error: None,
        duration: now.saturating_duration_since(started),
    };
    // `fetching` stays set until the outcome is in place, so that a request waiting for the token does
    // not give up in between.
    let failure = match fetched {
        Ok(minted) if slot.stop.is_cancelled() => {
            lock(&slot.state).fetching = false;
            event.status = Some(minted.status);
            event.error = Some(
                "the secret was changed or removed by a reload meanwhile; this token is not used"
                    .into(),
            );
            None
        }
        Ok(minted) => {
            let lifetime = minted.lifetime.min(crate::secrets::exchange::MAX_LIFETIME);
            let value = Arc::new(minted.value);
            let expires_at = wall + lifetime;
            event.status = Some(minted.status);
            let previous = lock(&slot.state)
                .token
                .as_ref()
                .map(|token| (token.value.clone(), token.expires_at));
            // Before anything can inject it: redaction must know the value it is to mask.
            let taken = observer.value_changed(&ValueChange {
                secret: &definition.name,
                current: Some(&value),
                previous: previous.as_ref().map(|(value, _)| value),
                previous_expires_at: previous.as_ref().map(|(_, expires_at)| *expires_at),
            });
            match taken {
                Ok(()) => {
                    let mut state = lock(&slot.state);
                    state.fetching = false;
                    state.token = Some(Token {
                        value,
                        usable_until: schedule::usable_until(now, lifetime),
                        expires_at,
                    });
                    state.next_fetch = schedule::refresh_at(now, lifetime, jitter());
                    state.failures = 0;
                    state.failing = None;
                    state.last_refresh = Some(wall);
                    if let Some(saving) = &saving {
                        state.last_error = Some((saving.clone(), wall));
                    }
                    drop(state);
                    event.expires_at = Some(expires_at);
                    event.error = saving;
                    tracing::info!(secret = %definition.name, endpoint = %event.endpoint_host, status = minted.status, lifetime_s = lifetime.as_secs(), "minted a token");
                    None
                }
                Err(why) => Some(Failure {
                    kind: FailureKind::Transient,
                    status: Some(minted.status),
                    retry_after: None,
                    message: format!("the new token was not used: {why}"),
                }),
            }
        }
        Err(failure) => Some(failure),
    };
    if let Some(failure) = failure {
        let mut state = lock(&slot.state);
        state.fetching = false;
        state.failures = state.failures.saturating_add(1);
        state.failing = Some(failure.kind);
        let delay =
            schedule::retry_delay(failure.kind, state.failures, failure.retry_after, jitter());
        state.next_fetch = now + delay;
        state.last_error = Some((failure.message.clone(), wall));
        let still_valid = usable(&state, now).is_some();
        drop(state);
        tracing::warn!(secret = %definition.name, endpoint = %event.endpoint_host, status = ?failure.status, error = %failure.message, kind = ?failure.kind, retry_in_s = delay.as_secs_f32(), still_valid, "token fetch failed");
        event.status = failure.status;
        event.verdict = FetchVerdict::Error;
        event.error = Some(failure.message);
    }
    observer.fetched(&event);
    slot.fetched.send_modify(|count| *count += 1);
}

fn usable(state: &SlotState, now: Instant) -> Option<Arc<SecretValue>> {
    state
        .token
        .as_ref()
        .filter(|token| now < token.usable_until)
        .map(|token| token.value.clone())
}

fn state_of(state: &SlotState, usable: bool) -> State {
    if state.fetching || state.forced {
        State::Refreshing
    } else if usable {
        State::Ok
    } else if state.failing == Some(FailureKind::Permanent) {
        State::Error
    } else if state.token.is_some() {
        State::Expired
    } else if state.failures > 0 {
        State::Error
    } else {
        State::Refreshing
    }
}

fn unavailable(name: &str, state: &SlotState) -> Unavailable {
    let reason = match (&state.last_error, state.failures, state.token.is_some()) {
        (Some((error, _)), 1.., _) => format!("the last fetch failed: {error}"),
        (_, _, true) => "the token expired; a new one is being fetched".into(),
        (_, _, false) => "the first token is being fetched".into(),
    };
    Unavailable {
        secret: name.to_owned(),
        reason,
    }
}

fn copy(value: &SecretValue) -> SecretValue {
    SecretValue::new(value.expose().to_owned())
}

/// A number in [0, 1) from the system's random source; 0.5 should it fail (jitter is not security).
fn jitter() -> f64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// The store's locks guard plain fields that every writer leaves consistent; a panic elsewhere while one
/// was held must not take every later request down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
