use std::path::Path;

use super::*;
use crate::secrets::definition::{GithubAppSpec, GrantKind, MintSpec, Oauth2Spec};
use crate::secrets::oauth2::ClientAuth;
use crate::secrets::testing::{https_server, rsa_pem};

fn oauth2(base: &str, path: &str) -> Definition {
    MintSpec::Oauth2(Oauth2Spec {
        token_url: format!("{base}{path}"),
        client_id: "sandbox".into(),
        client_secret: Some("secret".into()),
        grant: GrantKind::ClientCredentials,
        refresh_token: None,
        auth: ClientAuth::Basic,
        scope: None,
        params: Default::default(),
        default_expires_in: None,
    })
    .resolve("crm", &|_| Some("s3cret"), Path::new("/nonexistent"))
    .unwrap()
}

#[tokio::test]
async fn fetches_over_https_and_reads_the_answer_as_its_provider() {
    let server = https_server(&[b"h2", b"http/1.1"]).await;
    let base = format!("https://{}", server.address);
    let fetcher = HttpFetcher::new(server.tls.clone());
    let minted = fetcher.fetch(&oauth2(&base, "/token"), None).await.unwrap();
    assert_eq!(
        (
            minted.value.expose(),
            minted.lifetime.as_secs(),
            minted.status
        ),
        ("at-local", 60, 200)
    );
    let refused = fetcher
        .fetch(&oauth2(&base, "/nope"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (refused.kind, refused.status),
        (FailureKind::Permanent, Some(404))
    );
    let pem = rsa_pem();
    let app = MintSpec::GithubApp(GithubAppSpec {
        app_id: "1".into(),
        installation_id: 7,
        private_key: "key".into(),
        repositories: vec![],
        permissions: Default::default(),
        api: Some(base.clone()),
    })
    .resolve("github", &|_| Some(pem.as_str()), Path::new("/nonexistent"))
    .unwrap();
    let minted = fetcher.fetch(&app, None).await.unwrap();
    assert_eq!((minted.value.expose(), minted.status), ("ghs_local", 201));
    assert!(minted.lifetime.as_secs() > 3590);
}

#[tokio::test]
async fn an_endpoint_that_cannot_be_reached_is_a_transient_failure() {
    let server = https_server(&[b"h2"]).await;
    let fetcher = HttpFetcher::new(server.tls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = format!("https://{}", listener.local_addr().unwrap());
    drop(listener);
    let failure = fetcher
        .fetch(&oauth2(&closed, "/token"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (failure.kind, failure.status),
        (FailureKind::Transient, None)
    );
    assert!(
        failure.message.starts_with("connecting to 127.0.0.1"),
        "{failure}"
    );
    // Trusting nothing this server has: its certificate does not verify.
    let other = https_server(&[]).await;
    fetcher.set_tls(other.tls.clone());
    let base = format!("https://{}", server.address);
    let failure = fetcher
        .fetch(&oauth2(&base, "/token"), None)
        .await
        .unwrap_err();
    assert!(
        failure.message.starts_with("TLS with 127.0.0.1"),
        "{failure}"
    );
}
