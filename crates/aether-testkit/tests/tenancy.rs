//! The tenancy kit against a real server: a restricted user's refusals are logged and found, a
//! marker shows a refused subscription received nothing, and a reload changes the permissions of
//! a connection already open.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aether_testkit::tenancy::{self, Authorization, Marker};

const WAIT: Duration = Duration::from_secs(10);

/// What the server logs for the refusals of the test.
const PUBLISH_B: &str = "Publish Violation - Subject \"b.x\"";
const SUBSCRIBE_B: &str = "Subscription Violation - Subject \"b.secret\"";

/// `alice` may publish to `publish` (and the JetStream API) and subscribe to her inbox only.
fn users(publish: &str) -> Authorization {
    Authorization::with_operator().restricted_user(
        "alice",
        "pw",
        &format!(
            r#"{{ publish: {{ allow: [{publish}, "$JS.API.>"] }}, subscribe: {{ allow: ["_INBOX_alice.>"] }} }}"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_a_marker_shows_silence_and_a_reload_applies() {
    let server = users(r#""a.>""#).start("tenancy-kit").await.unwrap();
    let operator = tenancy::connect_operator(&server).await.unwrap();
    let (alice, watch) = tenancy::connect_watched(&server, "alice", "pw", Some("_INBOX_alice"))
        .await
        .unwrap();

    // A refused subscription receives nothing of what is published to it.
    let mut peek = alice.subscribe("b.secret").await.unwrap();
    let marker = Marker::subscribe(&alice, "_INBOX_alice", "$JS.API.INFO")
        .await
        .unwrap();
    operator.publish("b.secret", "secret".into()).await.unwrap();
    marker.arrive(&operator, WAIT).await.unwrap();
    assert!(tenancy::nothing_received(&mut peek));
    tenancy::wait_for_violation(&server, SUBSCRIBE_B, WAIT)
        .await
        .unwrap();

    // A refused publish is logged for the user; nothing else is.
    alice.publish("b.x", "x".into()).await.unwrap();
    alice.flush().await.unwrap();
    tenancy::wait_for_violation(&server, PUBLISH_B, WAIT)
        .await
        .unwrap();
    let refused = tenancy::violations(&server);
    let missing = tenancy::not_logged(&refused, "alice", &[PUBLISH_B, SUBSCRIBE_B]);
    assert!(missing.is_empty(), "no {missing:?} in {refused:#?}");
    let unexpected = tenancy::unexpected_violations(&refused, &["alice"], |l| l.contains("\"b."));
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert!(!tenancy::answered(&alice, "b.service", "".into(), Duration::from_millis(500)).await);
    assert!(watch.refusals() >= 1);

    // After a reload `b.>` is allowed and `a.>` is not, on the same connection. In order: had
    // `b.x` been refused again, its line would come before `a.x`'s.
    server.reload(&users(r#""b.>""#).config()).await.unwrap();
    server
        .wait_for_log("Reloaded server configuration", 1, WAIT)
        .await
        .unwrap();
    for subject in ["b.x", "a.x"] {
        alice.publish(subject, "x".into()).await.unwrap();
    }
    alice.flush().await.unwrap();
    let line = tenancy::wait_for_violation(&server, "Publish Violation - Subject \"a.x\"", WAIT)
        .await
        .unwrap();
    assert!(line.contains("user:alice\""), "{line}");
    let after = tenancy::violations(&server);
    let publish_b = after.iter().filter(|l| l.contains(PUBLISH_B)).count();
    assert_eq!(publish_b, 1, "{after:#?}");
    assert!(server.config_path().exists());
}
