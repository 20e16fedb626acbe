//! The store with a fake fetcher on paused time: no network, no waiting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::secrets::definition::{GrantKind, MintSpec, Oauth2Spec};
use crate::secrets::exchange::{Failure, Minted};
use crate::secrets::fetch::FetchFuture;
use crate::secrets::oauth2::ClientAuth;

/// What the fake endpoint does on its n-th fetch (from 1).
struct Step {
    delay: Duration,
    outcome: Fetched,
}

type Script = Box<dyn FnMut(u32) -> Step + Send>;

struct Fake {
    calls: AtomicU32,
    running: AtomicU32,
    most_running: AtomicU32,
    /// When each fetch started, and the refresh token it spent.
    log: Mutex<Vec<(Instant, Option<String>)>>,
    script: Mutex<Script>,
}

impl Fake {
    fn new(script: impl FnMut(u32) -> Step + Send + 'static) -> Arc<Fake> {
        Arc::new(Fake {
            calls: AtomicU32::new(0),
            running: AtomicU32::new(0),
            most_running: AtomicU32::new(0),
            log: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(script)),
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn starts(&self) -> Vec<Instant> {
        lock(&self.log).iter().map(|(at, _)| *at).collect()
    }

    fn spent(&self) -> Vec<Option<String>> {
        lock(&self.log)
            .iter()
            .map(|(_, spent)| spent.clone())
            .collect()
    }
}

impl Fetcher for Fake {
    fn fetch<'a>(
        &'a self,
        _definition: &'a Definition,
        refresh_token: Option<&'a SecretValue>,
    ) -> FetchFuture<'a> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.log).push((Instant::now(), refresh_token.map(|t| t.expose().to_owned())));
        let step = (lock(&self.script))(n);
        Box::pin(async move {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(step.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            step.outcome
        })
    }
}

fn minted(value: &str, lifetime: u64) -> Step {
    Step {
        delay: Duration::ZERO,
        outcome: Ok(Minted {
            value: SecretValue::new(value.into()),
            lifetime: Duration::from_secs(lifetime),
            refresh_token: None,
            status: 200,
        }),
    }
}

fn rotated(value: &str, refresh_token: &str) -> Step {
    let mut step = minted(value, 100);
    if let Ok(minted) = &mut step.outcome {
        minted.refresh_token = Some(SecretValue::new(refresh_token.into()));
    }
    step
}

fn failed(kind: FailureKind, status: u16, message: &str) -> Step {
    Step {
        delay: Duration::ZERO,
        outcome: Err(Failure {
            kind,
            status: Some(status),
            retry_after: None,
            message: message.into(),
        }),
    }
}

fn slow(delay: u64, mut step: Step) -> Step {
    step.delay = Duration::from_secs(delay);
    step
}

/// (secret, current, previous) as text: what the redaction matcher would be told.
type Change = (String, Option<String>, Option<String>);

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<FetchEvent>>,
    changes: Mutex<Vec<Change>>,
    /// A state file to read at each change: it must already hold the new refresh token.
    state_file: Mutex<Option<PathBuf>>,
    state_at_change: Mutex<Vec<String>>,
    /// Refuse the next change with this reason (as redaction would if it could not take the value).
    refuse: Mutex<Option<String>>,
}

impl Observer for Recorder {
    fn fetched(&self, event: &FetchEvent) {
        lock(&self.events).push(event.clone());
    }

    fn value_changed(&self, change: &ValueChange<'_>) -> Result<(), String> {
        let text = |v: Option<&Arc<SecretValue>>| v.map(|v| v.expose().to_owned());
        lock(&self.changes).push((
            change.secret.to_owned(),
            text(change.current),
            text(change.previous),
        ));
        if let Some(path) = &*lock(&self.state_file) {
            lock(&self.state_at_change).push(std::fs::read_to_string(path).unwrap_or_default());
        }
        match lock(&self.refuse).take() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

fn spec(scope: &str) -> Oauth2Spec {
    Oauth2Spec {
        token_url: "https://login.test/oauth2/token".into(),
        client_id: "sandbox".into(),
        client_secret: Some("client_secret".into()),
        grant: GrantKind::ClientCredentials,
        refresh_token: None,
        auth: ClientAuth::Basic,
        scope: Some(scope.into()),
        params: BTreeMap::new(),
        default_expires_in: None,
    }
}

fn resolve(name: &str, spec: Oauth2Spec, state_dir: &Path) -> Definition {
    let values: BTreeMap<&str, &str> =
        [("client_secret", "s3cret"), ("first_refresh", "rt-1")].into();
    MintSpec::Oauth2(spec)
        .resolve(name, &|n| values.get(n).copied(), state_dir)
        .unwrap()
}

fn oauth2(name: &str, scope: &str) -> Definition {
    resolve(name, spec(scope), Path::new("/nonexistent-state-dir"))
}

fn refresh_grant(name: &str, scope: &str, state_dir: &Path) -> Definition {
    let mut spec = spec(scope);
    spec.grant = GrantKind::RefreshToken;
    spec.refresh_token = Some("first_refresh".into());
    resolve(name, spec, state_dir)
}

fn store(fake: &Arc<Fake>) -> (Store, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (Store::new(fake.clone(), recorder.clone()), recorder)
}

async fn sleep(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}

fn value(store: &Store, name: &str) -> Option<String> {
    store.value(name).ok().map(|v| v.expose().to_owned())
}

fn state(store: &Store, name: &str) -> State {
    store
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
        .state
}

#[tokio::test(start_paused = true)]
async fn the_first_token_is_fetched_at_once_and_a_request_may_wait_for_it() {
    let fake = Fake::new(|n| slow(2, minted(&format!("t{n}"), 100)));
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    let refused = store.value("crm").unwrap_err();
    assert_eq!(
        refused.to_string(),
        "secret \"crm\" has no valid token: the first token is being fetched"
    );
    assert_eq!(state(&store, "crm"), State::Refreshing);
    let started = Instant::now();
    let value = store
        .wait_value("crm", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(value.expose(), "t1");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(fake.calls(), 1);
    assert_eq!(state(&store, "crm"), State::Ok);
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded() {
    let fake = Fake::new(|n| slow(30, minted(&format!("t{n}"), 100)));
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    let refused = store.wait_value("crm", WAIT_FOR_TOKEN).await.unwrap_err();
    assert!(
        refused.reason.contains("no token came within 10s"),
        "{refused}"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_are_refreshed_at_half_life_and_not_handed_out_in_their_last_tenth() {
    let fake = Fake::new(|n| match n {
        1 | 2 => minted(&format!("t{n}"), 100),
        _ => failed(FailureKind::Transient, 503, "HTTP 503"),
    });
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(44.0).await;
    assert_eq!(
        (value(&store, "crm").as_deref(), fake.calls()),
        (Some("t1"), 1)
    );
    sleep(12.0).await; // 56 s: past 45..55 s, the refresh has come.
    assert_eq!(
        (value(&store, "crm").as_deref(), fake.calls()),
        (Some("t2"), 2)
    );
    let t2_received = fake.starts()[1];
    // Every later fetch fails: t2 is used while it is valid, and not in its last 10 s.
    tokio::time::sleep_until(t2_received + Duration::from_millis(89_900)).await;
    assert_eq!(value(&store, "crm").as_deref(), Some("t2"));
    assert_eq!(state(&store, "crm"), State::Ok);
    tokio::time::sleep_until(t2_received + Duration::from_secs(90)).await;
    let refused = store.value("crm").unwrap_err();
    assert_eq!(refused.reason, "the last fetch failed: HTTP 503");
    assert_eq!(state(&store, "crm"), State::Expired);
    assert!(fake.calls() > 3);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_to_thirty_seconds_and_honour_retry_after() {
    let fake = Fake::new(|n| match n {
        8 => {
            let mut step = failed(FailureKind::Transient, 429, "HTTP 429");
            if let Err(failure) = &mut step.outcome {
                failure.retry_after = Some(Duration::from_secs(100));
            }
            step
        }
        _ => failed(FailureKind::Transient, 500, "HTTP 500"),
    });
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(400.0).await;
    let starts = fake.starts();
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    // Equal jitter: between half and all of 1, 2, 4, 8, 16, 30, 30 s...
    for (i, bound) in [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0].iter().enumerate() {
        assert!(
            gaps[i] >= bound / 2.0 && gaps[i] <= *bound,
            "gap {i}: {gaps:?}"
        );
    }
    // ...except after the 429 that said Retry-After: 100.
    assert!(gaps[7] >= 100.0 && gaps[7] <= 101.0, "{gaps:?}");
    assert!(gaps[8..].iter().all(|gap| *gap <= 30.0), "{gaps:?}");
    assert_eq!(state(&store, "crm"), State::Error);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_wait_five_minutes_unless_a_reload_comes() {
    let fake = Fake::new(|n| match n {
        1 | 2 => failed(FailureKind::Permanent, 400, "HTTP 400: invalid_client"),
        _ => minted("t3", 100),
    });
    let (store, recorder) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(1.0).await;
    assert_eq!(fake.calls(), 1);
    assert_eq!(state(&store, "crm"), State::Error);
    let status = &store.status()[0];
    assert_eq!(
        status.last_error.as_deref(),
        Some("HTTP 400: invalid_client")
    );
    assert!(status.next_fetch_in.unwrap() >= Duration::from_secs(299));
    assert_eq!(
        store.value("crm").unwrap_err().reason,
        "the last fetch failed: HTTP 400: invalid_client"
    );
    sleep(298.0).await;
    assert_eq!(fake.calls(), 1);
    sleep(32.0).await;
    assert_eq!(fake.calls(), 2);
    // The operator fixed the client at the provider and reloads: retried at once, same slot.
    store.reload(vec![oauth2("crm", "api")]);
    sleep(0.1).await;
    assert_eq!(fake.calls(), 3);
    assert_eq!(value(&store, "crm").as_deref(), Some("t3"));
    let verdicts: Vec<(FetchVerdict, Option<u16>)> = lock(&recorder.events)
        .iter()
        .map(|e| (e.verdict, e.status))
        .collect();
    assert_eq!(
        verdicts,
        [
            (FetchVerdict::Error, Some(400)),
            (FetchVerdict::Error, Some(400)),
            (FetchVerdict::Minted, Some(200))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_still_valid_token_is_used_while_retrying() {
    let fake = Fake::new(|n| match n {
        1 => minted("t1", 100),
        _ => failed(FailureKind::Transient, 502, "HTTP 502"),
    });
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(70.0).await;
    assert!(fake.calls() >= 3);
    assert_eq!(value(&store, "crm").as_deref(), Some("t1"));
    let status = &store.status()[0];
    assert_eq!(status.state, State::Ok);
    assert_eq!(status.last_error.as_deref(), Some("HTTP 502"));
    assert!(status.usable_for.unwrap() <= Duration::from_secs(20));
}

/// Redaction's hook refuses a new value: it is not handed out, the old token goes on while valid, the
/// fetch is retried as a transient failure, and the next value it takes is used.
#[tokio::test(start_paused = true)]
async fn a_value_the_observer_refuses_is_not_used_and_the_fetch_is_retried() {
    let fake = Fake::new(|n| minted(&format!("t{n}"), 100));
    let (store, recorder) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(1.0).await;
    assert_eq!(value(&store, "crm").as_deref(), Some("t1"));
    *lock(&recorder.refuse) = Some("the matcher is full".into());
    // The refresh (45..55 s) mints t2, which is refused.
    while fake.calls() < 2 {
        sleep(0.1).await;
    }
    sleep(0.1).await; // its outcome published; the retry is 0.5 s or more away
    assert_eq!(value(&store, "crm").as_deref(), Some("t1"));
    let status = &store.status()[0];
    assert_eq!(
        status.last_error.as_deref(),
        Some("the new token was not used: the matcher is full")
    );
    let events = lock(&recorder.events).clone();
    assert_eq!(events[1].verdict, FetchVerdict::Error);
    assert_eq!(events[1].expires_at, None);
    sleep(2.0).await; // the first retry comes after 0.5..1 s
    assert_eq!(fake.calls(), 3);
    assert_eq!(value(&store, "crm").as_deref(), Some("t3"));
    let changes = lock(&recorder.changes).clone();
    assert_eq!(
        changes.last().unwrap(),
        &(
            "crm".to_owned(),
            Some("t3".to_owned()),
            Some("t1".to_owned())
        )
    );
}

#[tokio::test(start_paused = true)]
async fn fifty_upstream_401s_make_one_fetch() {
    let fake = Fake::new(|n| slow(if n == 1 { 0 } else { 1 }, minted(&format!("t{n}"), 3600)));
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    let t1 = store
        .wait_value("crm", Duration::from_secs(10))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, t1) = (store.clone(), t1.clone());
            tokio::spawn(async move { store.refresh_now("crm", &t1) })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RefreshNow::Started)
            .count(),
        1
    );
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, RefreshNow::Started | RefreshNow::AlreadyFetching)));
    // The old token goes on being used while the new one is fetched.
    assert_eq!(value(&store, "crm").as_deref(), Some("t1"));
    sleep(2.0).await;
    assert_eq!(
        (fake.calls(), value(&store, "crm").as_deref()),
        (2, Some("t2"))
    );
    // Late reports about t1 are about a token already replaced.
    assert_eq!(store.refresh_now("crm", &t1), RefreshNow::NotCurrent);
    // A 401 on t2 right away: not another fetch within 10 s of the last forced one.
    let t2 = store.value("crm").unwrap();
    assert_eq!(store.refresh_now("crm", &t2), RefreshNow::TooSoon);
    sleep(10.0).await;
    assert_eq!(store.refresh_now("crm", &t2), RefreshNow::Started);
    assert_eq!(store.refresh_now("nope", &t2), RefreshNow::Unknown);
}

#[tokio::test(start_paused = true)]
async fn fifty_requests_at_expiry_wait_for_one_fetch() {
    // t1 lives 10 s (usable 9 s); its refresh (at 4.5..5.5 s) takes 8 s.
    let fake = Fake::new(|n| slow(if n == 1 { 0 } else { 8 }, minted(&format!("t{n}"), 10)));
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(9.5).await;
    assert!(store.value("crm").is_err());
    let waits: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .wait_value("crm", Duration::from_secs(10))
                    .await
                    .map(|v| v.expose().to_owned())
            })
        })
        .collect();
    for wait in waits {
        assert_eq!(wait.await.unwrap().as_deref(), Ok("t2"));
    }
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_secret_refuses_at_once_instead_of_waiting() {
    let fake = Fake::new(|_| failed(FailureKind::Transient, 500, "HTTP 500"));
    let (store, _) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(0.1).await;
    let started = Instant::now();
    let refused = store
        .wait_value("crm", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(refused.reason, "the last fetch failed: HTTP 500");
    assert_eq!(
        store.value("other").unwrap_err().to_string(),
        "secret \"other\" has no valid token: it is not a minted secret"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_tokens_of_unchanged_definitions() {
    let fake = Fake::new(|n| minted(&format!("t{n}"), 3600));
    let (store, recorder) = store(&fake);
    store.reload(vec![
        oauth2("a", "api"),
        oauth2("b", "api"),
        oauth2("c", "api"),
    ]);
    sleep(0.1).await;
    assert_eq!(fake.calls(), 3);
    let a = store.value("a").unwrap();
    let b = store.value("b").unwrap();
    let c = store.value("c").unwrap().expose().to_owned();
    store.reload(vec![oauth2("a", "api"), oauth2("b", "other scope")]);
    sleep(0.1).await;
    assert_eq!(fake.calls(), 4);
    assert!(Arc::ptr_eq(&store.value("a").unwrap(), &a));
    assert_ne!(store.value("b").unwrap().expose(), b.expose());
    assert!(store.value("c").is_err());
    let names: Vec<String> = store.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);
    // Redaction hears of each new value, and of values a reload retired (still valid upstream).
    let changes = lock(&recorder.changes).clone();
    assert!(changes.contains(&("c".into(), None, Some(c))));
    assert!(changes.contains(&("b".into(), None, Some(b.expose().to_owned()))));
    assert_eq!(
        changes
            .iter()
            .filter(|(_, current, _)| current.is_some())
            .count(),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn each_fetch_is_one_event_without_a_value() {
    let fake = Fake::new(|n| match n {
        1 => minted("t-secret-1", 100),
        _ => failed(FailureKind::Transient, 500, "HTTP 500"),
    });
    let (store, recorder) = store(&fake);
    store.reload(vec![oauth2("crm", "api")]);
    sleep(56.0).await;
    let events = lock(&recorder.events).clone();
    assert_eq!(events.len() as u32, fake.calls());
    let first = &events[0];
    assert_eq!(
        (
            first.secret.as_str(),
            first.source,
            first.endpoint_host.as_str()
        ),
        ("crm", SourceKind::Oauth2, "login.test")
    );
    assert_eq!(
        (first.verdict, first.status, first.error.as_deref()),
        (FetchVerdict::Minted, Some(200), None)
    );
    let lifetime = first
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(lifetime > Duration::from_secs(90) && lifetime <= Duration::from_secs(100));
    assert_eq!(
        (
            events[1].verdict,
            events[1].status,
            events[1].error.as_deref()
        ),
        (FetchVerdict::Error, Some(500), Some("HTTP 500"))
    );
    let text = format!("{events:?}{:?}", store.status());
    assert!(
        !text.contains("t-secret-1") && !text.contains("s3cret"),
        "{text}"
    );
    let changes = lock(&recorder.changes).clone();
    assert_eq!(changes, [("crm".into(), Some("t-secret-1".into()), None)]);
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("sandbox-store-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(start_paused = true)]
async fn rotated_refresh_tokens_are_saved_before_use_and_spent_after_a_restart() {
    let dir = TempDir::new("rotation");
    let fake = Fake::new(|n| rotated(&format!("t{n}"), &format!("rt-{}", n + 1)));
    let (store, recorder) = store(&fake);
    *lock(&recorder.state_file) = Some(dir.0.join("crm"));
    store.reload(vec![refresh_grant("crm", "api", &dir.0)]);
    sleep(120.0).await; // 100 s tokens: refreshed at ~50 and ~100 s.
    assert_eq!(fake.calls(), 3);
    assert_eq!(
        fake.spent(),
        [
            Some("rt-1".into()),
            Some("rt-2".into()),
            Some("rt-3".into())
        ]
    );
    // When each new access token was announced, its refresh token was on disk already.
    let seen = lock(&recorder.state_at_change).clone();
    for (i, text) in seen.iter().enumerate() {
        assert!(text.contains(&format!("\"rt-{}\"", i + 2)), "{i}: {text}");
    }
    drop(store);
    // A restarted daemon spends the saved token, not the configured one.
    let fake = Fake::new(|n| rotated(&format!("u{n}"), &format!("rt-x{n}")));
    let (store, _) = self::store(&fake);
    store.reload(vec![refresh_grant("crm", "api", &dir.0)]);
    sleep(0.1).await;
    assert_eq!(fake.spent(), [Some("rt-4".into())]);
    assert_eq!(value(&store, "crm").as_deref(), Some("u1"));
}

#[tokio::test(start_paused = true)]
async fn fetches_of_one_secret_never_overlap_across_a_reload() {
    let dir = TempDir::new("overlap");
    let fake = Fake::new(|n| slow(5, rotated(&format!("t{n}"), &format!("rt-{}", n + 1))));
    let (store, recorder) = store(&fake);
    store.reload(vec![refresh_grant("crm", "api", &dir.0)]);
    sleep(1.0).await;
    // A changed definition while the first fetch is running: the new slot waits for it, then spends the
    // token it rotated to.
    store.reload(vec![refresh_grant("crm", "api other", &dir.0)]);
    sleep(12.0).await;
    assert_eq!(fake.most_running.load(Ordering::SeqCst), 1);
    assert_eq!(fake.spent(), [Some("rt-1".into()), Some("rt-2".into())]);
    assert_eq!(value(&store, "crm").as_deref(), Some("t2"));
    // t1 came for the replaced slot: accounted for, never handed out nor announced.
    let events = lock(&recorder.events).clone();
    assert!(
        events[0].error.as_ref().unwrap().contains("not used"),
        "{events:?}"
    );
    let changes = lock(&recorder.changes).clone();
    assert_eq!(changes, [("crm".into(), Some("t2".into()), None)]);
}

#[tokio::test(start_paused = true)]
async fn a_rotated_token_that_cannot_be_saved_is_still_used_and_reported() {
    let dir = TempDir::new("unsaved");
    std::fs::create_dir_all(&dir.0).unwrap();
    let blocker = dir.0.join("file");
    std::fs::write(&blocker, "").unwrap();
    let fake = Fake::new(|n| rotated(&format!("t{n}"), &format!("rt-{}", n + 1)));
    let (store, recorder) = store(&fake);
    store.reload(vec![refresh_grant("crm", "api", &blocker)]);
    sleep(60.0).await;
    assert_eq!(fake.spent(), [Some("rt-1".into()), Some("rt-2".into())]);
    assert_eq!(value(&store, "crm").as_deref(), Some("t2"));
    let status = &store.status()[0];
    assert_eq!(status.state, State::Ok);
    assert!(
        status
            .last_error
            .as_ref()
            .unwrap()
            .contains("could not be saved"),
        "{status:?}"
    );
    let events = lock(&recorder.events).clone();
    assert!(events[0]
        .error
        .as_ref()
        .unwrap()
        .contains("could not be saved"));
    assert!(!format!("{events:?}").contains("rt-2"));
}
