//! The relay end to end, an h2 client and an h2 upstream on either side: secrets in, bodies both ways.

use http::StatusCode;
use hyper::body::Bytes;

use super::test_support::*;
use crate::audit::Verdict;

#[tokio::test]
async fn requests_get_the_secret_in_place_of_the_clients_and_responses_pass() {
    let mut s = setup(1 << 20, authorization(), None).await;
    let mut req = request("GET", "https://api.test/trailers?q=1");
    req.headers_mut()
        .insert("authorization", "Bearer client-made-up".parse().unwrap());
    req.headers_mut().insert("x-kept", "yes".parse().unwrap());
    let (response, body, trailers) = get(&mut s.client, req, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, b"ok");
    assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (method, authority, path, headers) = &seen[0];
    assert_eq!(
        (method.as_str(), authority.as_str(), path.as_str()),
        ("GET", SNI, "/trailers")
    );
    assert_eq!(
        headers.get_all("authorization").iter().collect::<Vec<_>>(),
        vec![SECRET]
    );
    assert_eq!(headers["x-kept"], "yes");
    let records = records_settled(&s.records, 1).await;
    let record = &records[0];
    assert_eq!(record.verdict, Verdict::Injected);
    assert_eq!(record.status, Some(200));
    assert_eq!(record.path.as_deref(), Some("/trailers"));
    assert_eq!(record.host.as_deref(), Some(SNI));
    assert_eq!(record.bytes_down, 2);
    assert!(!format!("{record:?}").contains("s3cret"));
}

#[tokio::test]
async fn bodies_stream_both_ways_under_flow_control_on_many_streams() {
    let s = setup(1 << 20, authorization(), None).await;
    let upload: Bytes = (0..3_000_000usize)
        .map(|i| (i % 7) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = s.client.clone();
        let upload = upload.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let (response, body, _) = get(
                    &mut client,
                    request("POST", "https://api.test/upload"),
                    Some(upload),
                )
                .await
                .unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(body, b"3000000");
            } else {
                let (_, body, _) = get(
                    &mut client,
                    request("GET", "https://api.test/big?2500000"),
                    None,
                )
                .await
                .unwrap();
                assert_eq!(body.len(), 2_500_000);
                assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let records = records_settled(&s.records, 8).await;
    assert!(
        records.iter().all(|r| r.verdict == Verdict::Injected),
        "{records:?}"
    );
    let up: u64 = records.iter().map(|r| r.bytes_up).sum();
    let down: u64 = records.iter().map(|r| r.bytes_down).sum();
    assert_eq!((up, down), (4 * 3_000_000, 4 * 2_500_000 + 4 * 7));
}

#[tokio::test]
async fn a_secret_echoed_in_a_header_trailer_and_body_cut_anywhere_is_masked() {
    let mut s = setup_masking(1 << 20, authorization(), None, masking()).await;
    let stars = "*".repeat(SECRET.len());
    for at in 0..=SECRET.len() {
        let uri = format!("https://api.test/split?{at}");
        let (response, body, trailers) = get(&mut s.client, request("GET", &uri), None)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-echo"], stars.as_str(), "cut at {at}");
        assert_eq!(body, format!("<{stars}>").as_bytes(), "cut at {at}");
        assert_eq!(trailers.unwrap()["x-echo-trailer"], stars.as_str());
    }
    let records = records_settled(&s.records, SECRET.len() + 1).await;
    assert!(records.iter().all(|r| r.redacted == 3), "{records:?}");
    assert!(records.iter().all(|r| r.verdict == Verdict::Injected));
    assert!(records
        .iter()
        .all(|r| r.bytes_down == SECRET.len() as u64 + 2));
}

#[tokio::test]
async fn without_masking_the_echo_passes() {
    let mut s = setup(1 << 20, authorization(), None).await;
    let (response, body, _) = get(
        &mut s.client,
        request("GET", "https://api.test/split?3"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["x-echo"], SECRET);
    assert_eq!(body, format!("<{SECRET}>").as_bytes());
    let records = records_settled(&s.records, 1).await;
    assert_eq!(records[0].redacted, 0);
}

#[tokio::test]
async fn held_bytes_keep_flow_control_whole_on_many_streams() {
    // A small connection window: bytes the relay holds, or counted wrong, would stall the streams.
    let s = setup_masking(65_535, authorization(), None, masking()).await;
    let want: Vec<u8> = b"s3cret-valu."
        .iter()
        .copied()
        .cycle()
        .take(700_001)
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut client = s.client.clone();
        let want = want.clone();
        tasks.push(tokio::spawn(async move {
            let (_, body, _) = get(
                &mut client,
                request("GET", "https://api.test/held?700001"),
                None,
            )
            .await
            .unwrap();
            assert!(body == want, "{} bytes", body.len());
        }));
    }
    for task in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(20), task)
            .await
            .expect("the streams stalled")
            .unwrap();
    }
}

#[tokio::test]
async fn a_coded_response_is_refused_and_the_connection_goes_on() {
    let mut s = setup_masking(1 << 20, authorization(), None, masking()).await;
    let (response, body, _) = get(&mut s.client, request("GET", "https://api.test/gzip"), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("Content-Encoding gzip"), "{body}");
    // The header tables are still in step: the next responses decode.
    for _ in 0..3 {
        let (response, body, _) = get(
            &mut s.client,
            request("GET", "https://api.test/split?5"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body.len(), SECRET.len() + 2);
    }
    let records = records_settled(&s.records, 4).await;
    let refused = records.iter().find(|r| r.status == Some(502)).unwrap();
    assert_eq!(refused.verdict, Verdict::Error);
    assert!(refused
        .error
        .as_deref()
        .is_some_and(|e| e.contains("cannot scan")));
}
