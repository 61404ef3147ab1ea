//! aether-nats against a real nats-server: fenced publishes (own subject and another subject's
//! sequence), TTLs, "no responders" re-sent until patience runs out, and failures classified by
//! kind into `StoreError`s.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aether_core::StoreError;
use aether_nats::classify::{Class, class_of, store_error};
use aether_nats::publish::{Fence, apply_ttl, publish_patiently, refused_for_sequence};
use aether_nats::settle::{is_settling, while_settling};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage, stream};

async fn stream_on(server: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(server.connect().await.unwrap());
    js.create_stream(stream::Config {
        name: "FENCED".into(),
        subjects: vec!["fenced.>".into()],
        allow_message_ttl: true,
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

fn fenced(fence: Fence<'_>, payload: &'static str) -> PublishMessage {
    let mut headers = HeaderMap::new();
    fence.apply(&mut headers);
    PublishMessage::build()
        .payload(payload.into())
        .headers(headers)
}

#[tokio::test]
async fn a_fenced_publish_lands_once_and_the_loser_is_told_why() {
    let server = NatsServer::start().await.unwrap();
    let js = stream_on(&server).await;
    let subject = "fenced.a".into();
    let patience = Duration::from_secs(2);

    let first = publish_patiently(
        &js,
        &subject,
        || fenced(Fence::subject_at(0), "one"),
        patience,
    )
    .await
    .unwrap();
    // A second writer that also expected an empty subject loses, by the server's check.
    let lost = publish_patiently(
        &js,
        &subject,
        || fenced(Fence::subject_at(0), "two"),
        patience,
    )
    .await
    .unwrap_err();
    assert!(refused_for_sequence(&lost), "{lost:?}");
    // Expecting the real last sequence wins.
    let second = publish_patiently(
        &js,
        &subject,
        || fenced(Fence::subject_at(first.sequence), "two"),
        patience,
    )
    .await
    .unwrap();
    assert!(second.sequence > first.sequence);

    // A fence on another subject: written only while that subject is where the writer saw it.
    let lease = Fence {
        last_sequence: second.sequence,
        of_subject: Some("fenced.a"),
    };
    publish_patiently(&js, &"fenced.map".into(), || fenced(lease, "map"), patience)
        .await
        .unwrap();
    let stale = Fence {
        last_sequence: first.sequence,
        of_subject: Some("fenced.a"),
    };
    let refused = publish_patiently(&js, &"fenced.map".into(), || fenced(stale, "map"), patience)
        .await
        .unwrap_err();
    assert!(refused_for_sequence(&refused), "{refused:?}");
}

#[tokio::test]
async fn a_message_with_a_ttl_expires() {
    let server = NatsServer::start().await.unwrap();
    let js = stream_on(&server).await;
    let mut headers = HeaderMap::new();
    apply_ttl(&mut headers, Duration::from_millis(200)); // rounded up to 1 s
    let ack = publish_patiently(
        &js,
        &"fenced.ttl".into(),
        || {
            PublishMessage::build()
                .payload("soon gone".into())
                .headers(headers.clone())
        },
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let stream = js.get_stream("FENCED").await.unwrap();
    assert!(stream.get_raw_message(ack.sequence).await.is_ok());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if stream.get_raw_message(ack.sequence).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn nobody_answering_is_sent_again_then_reported_as_unavailable() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let started = tokio::time::Instant::now();
    let mut attempts = 0;
    let err = publish_patiently(
        &js,
        &"no.stream.here".into(),
        || {
            attempts += 1;
            PublishMessage::build().payload("x".into())
        },
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(attempts > 1, "re-sent while nobody answered");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(class_of(&err), Class::Unavailable);
    assert!(is_settling(&err));
    assert!(matches!(
        store_error("appending", err),
        StoreError::Unavailable { .. }
    ));
}

#[tokio::test]
async fn a_refusal_that_is_not_the_cluster_settling_is_not_retried() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let mut attempts = 0;
    // Two streams cannot share a subject: refused at once, and not tried again.
    let config = |name: &str| stream::Config {
        name: name.into(),
        subjects: vec!["overlap.x".into()],
        ..Default::default()
    };
    js.create_stream(config("FIRST")).await.unwrap();
    let refused = while_settling("creating a stream", Duration::from_secs(10), || {
        attempts += 1;
        js.create_stream(config("SECOND"))
    })
    .await
    .unwrap_err();
    assert_eq!(attempts, 1, "{refused}");
}
