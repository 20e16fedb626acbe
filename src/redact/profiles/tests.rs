use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
[secrets]
openai = { env = "SBX_TEST_NEVER_SET" }
stripe = { env = "SBX_TEST_NEVER_SET" }
org = { env = "SBX_TEST_NEVER_SET" }
aws_key = { env = "SBX_TEST_NEVER_SET" }
aws_token = { env = "SBX_TEST_NEVER_SET" }

[[integration]]
name = "openai"
hosts = ["api.openai.com"]
headers = { Authorization = "Bearer ${secret:openai}", "OpenAI-Organization" = "${secret:org}/${secret:openai}" }

[[integration]]
name = "stripe"
hosts = ["api.stripe.com"]
basic_auth = { username = "${secret:stripe}", password = "" }
redact = false

[[integration]]
name = "aws"
hosts = ["bedrock-runtime.us-east-1.amazonaws.com"]
aws_sigv4 = { access_key_id = "AKIAEXAMPLE", secret_access_key = "aws_key", session_token = "aws_token" }

[[integration]]
name = "plain"
hosts = ["plain.example.com"]
headers = { X-Team = "blue" }
"#;

const OPENAI: &str = "sk-openai-0123456789";
const STRIPE: &str = "sk_live_stripe_abcdef";
const ORG: &str = "org-1234567890";
const AWS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const AWS_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLETOKEN";

fn integrations(names: &[&str]) -> Vec<Integration> {
    let config = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
    names
        .iter()
        .map(|name| {
            config
                .integrations
                .iter()
                .find(|i| i.name == *name)
                .unwrap()
                .clone()
        })
        .collect()
}

fn loaded() -> Arc<Secrets> {
    Arc::new(Secrets::of(&[
        ("openai", OPENAI),
        ("stripe", STRIPE),
        ("org", ORG),
        ("aws_key", AWS_KEY),
        ("aws_token", AWS_TOKEN),
    ]))
}

fn masks(profile: &ProfileRedaction, text: &str) -> bool {
    profile.needles().mask_all(text.as_bytes()).is_some()
}

#[test]
fn every_form_of_every_injected_secret_is_masked() {
    let redactions = Redactions::default();
    let profile = redactions
        .for_sandbox(&integrations(&["openai", "stripe", "plain"]), &loaded())
        .unwrap();
    for form in [
        OPENAI.to_string(),
        format!("Bearer {OPENAI}"),
        format!("{ORG}/{OPENAI}"),
        ORG.to_string(),
        STRIPE.to_string(),
        // Basic auth as sent, and its credentials alone (base64 of "user:").
        basic_credentials(STRIPE, ""),
        basic_credentials(STRIPE, "")["Basic ".len()..].to_string(),
    ] {
        assert!(masks(&profile, &form), "{form} is not masked");
    }
    // A secret of an integration with `redact = false` is masked too (in the others' responses: the
    // proxies do not scan that integration's own); a header without a secret is not a secret.
    assert!(!masks(&profile, "X-Team: blue blue blue"));
    let printed = format!("{profile:?}");
    assert!(
        !printed.contains(OPENAI) && printed.contains("openai"),
        "{printed}"
    );
}

#[test]
fn sandboxes_given_the_same_share_one_and_others_do_not() {
    let redactions = Redactions::default();
    let secrets = loaded();
    let one = redactions
        .for_sandbox(&integrations(&["openai"]), &secrets)
        .unwrap();
    let two = redactions
        .for_sandbox(&integrations(&["openai"]), &secrets)
        .unwrap();
    assert!(Arc::ptr_eq(&one, &two));
    let other_profile = redactions
        .for_sandbox(&integrations(&["stripe"]), &secrets)
        .unwrap();
    assert!(!Arc::ptr_eq(&one, &other_profile));
    assert!(!masks(&other_profile, OPENAI));
    // A reload reads the secrets again: the sandboxes started after it get their own.
    let reloaded = redactions
        .for_sandbox(&integrations(&["openai"]), &loaded())
        .unwrap();
    assert!(!Arc::ptr_eq(&one, &reloaded));
    // Gone with the last sandbox that held it.
    let weak = Arc::downgrade(&one);
    drop((one, two));
    assert!(weak.upgrade().is_none());
    redactions
        .for_sandbox(&integrations(&["stripe"]), &secrets)
        .unwrap();
    assert_eq!(redactions.state.lock().unwrap().live.len(), 2);
}

#[test]
fn a_changed_value_is_masked_in_every_sandbox_that_injects_it_and_the_old_one_until_it_expires() {
    let redactions = Redactions::default();
    let secrets = loaded();
    let openai = redactions
        .for_sandbox(&integrations(&["openai"]), &secrets)
        .unwrap();
    let stripe = redactions
        .for_sandbox(&integrations(&["stripe"]), &secrets)
        .unwrap();
    let stream_before = openai.needles();
    let stripe_needles = stripe.needles();
    let new = "sk-openai-minted-999999";
    let expires = Instant::now() + Duration::from_secs(600);
    redactions
        .value_changed("openai", new, Some(OPENAI), expires)
        .unwrap();
    for form in [
        new.to_string(),
        format!("Bearer {new}"),
        format!("{ORG}/{new}"),
        OPENAI.to_string(),
        format!("Bearer {OPENAI}"),
        format!("{ORG}/{OPENAI}"),
        ORG.to_string(),
    ] {
        assert!(masks(&openai, &form), "{form}");
    }
    // A stream that began before keeps its needles; a sandbox that does not inject it is not touched.
    assert!(stream_before.mask_all(new.as_bytes()).is_none());
    assert!(Arc::ptr_eq(&stripe_needles, &stripe.needles()));
    // A sandbox started now (a new config) gets the new value, and the old one while it may come back.
    let started_after = redactions
        .for_sandbox(
            &integrations(&["openai"]),
            &Arc::new(Secrets::of(&[("org", ORG)])),
        )
        .unwrap();
    assert!(masks(&started_after, new));
    assert!(masks(&started_after, &format!("{ORG}/{new}")));
    assert!(masks(&started_after, OPENAI));
    // A value whose time is up is dropped; the one before stays until its own time.
    redactions
        .value_changed(
            "openai",
            "sk-openai-minted-third",
            Some(new),
            Instant::now(),
        )
        .unwrap();
    assert!(!masks(&openai, new));
    assert!(masks(&openai, OPENAI));
    assert!(masks(&openai, "sk-openai-minted-third"));
}

#[test]
fn a_value_too_long_to_mask_is_refused_and_changes_nothing() {
    let redactions = Redactions::default();
    let openai = redactions
        .for_sandbox(&integrations(&["openai"]), &loaded())
        .unwrap();
    let long = "x".repeat(crate::redact::MAX_NEEDLE + 1);
    let error = redactions
        .value_changed("openai", &long, Some(OPENAI), Instant::now())
        .unwrap_err();
    assert!(!error.to_string().contains("xxxxxxxx"));
    assert!(masks(&openai, OPENAI));
    // Not remembered either: a sandbox started now is not refused for it.
    let started_after = redactions
        .for_sandbox(
            &integrations(&["openai"]),
            &Arc::new(Secrets::of(&[("org", ORG)])),
        )
        .unwrap();
    redactions
        .value_changed("openai", "sk-openai-fine-value", None, Instant::now())
        .unwrap();
    assert!(masks(&started_after, "sk-openai-fine-value"));
    assert!(masks(&openai, "sk-openai-fine-value"));
    let refused = redactions.for_sandbox(
        &integrations(&["stripe"]),
        &Arc::new(Secrets::of(&[("stripe", &long)])),
    );
    assert!(refused.is_err());
}

#[test]
fn an_aws_integrations_secret_key_and_session_token_are_masked() {
    let profile = Redactions::default()
        .for_sandbox(&integrations(&["aws"]), &loaded())
        .unwrap();
    assert!(masks(&profile, &format!("{{\"key\": \"{AWS_KEY}\"}}")));
    assert!(masks(
        &profile,
        &format!("x-amz-security-token: {AWS_TOKEN}")
    ));
    // The access key id is no secret: every signature carries it.
    assert!(!masks(&profile, "Credential=AKIAEXAMPLE/20250101"));
}
