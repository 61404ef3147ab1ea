//! Reminders kept by the server's message schedules, against a real nats-server: set, read,
//! list, cancel, firings handed out once and settled, hostile names and payloads, a stream an
//! outsider wrote into.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use aether_core::reminder::{
    Due, DueFirings, Reminder, ReminderError, ReminderKey, ReminderStore, Settled, When,
    unix_millis,
};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_testkit::nats::NatsServer;
use futures::StreamExt;

async fn open(server: &NatsServer, store: &str) -> JetStreamReminders {
    JetStreamReminders::open_with_ack_wait(
        server.connect().await.unwrap(),
        store,
        &JetStreamConfig::default(),
        Duration::from_secs(2),
    )
    .await
    .unwrap()
}

async fn next(due: &mut DueFirings) -> Due {
    tokio::time::timeout(Duration::from_secs(10), due.next())
        .await
        .expect("a firing within 10 s")
        .expect("the feed goes on")
        .expect("a well-formed firing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_is_stored_listed_fired_once_and_gone() {
    let server = NatsServer::start().await.unwrap();
    let reminders = open(&server, "shop").await;
    let key = ReminderKey::new("order", "order-1", "payment-deadline");
    let later = ReminderKey::new("order", "order-1", "review");
    // Far enough ahead to read it back first, even on a busy machine.
    let at = SystemTime::now() + Duration::from_secs(3);
    reminders
        .set(&Reminder::new(key.clone(), When::At(at), &b"cancel"[..]))
        .await
        .unwrap();
    reminders
        .set(&Reminder::new(
            later.clone(),
            When::after(Duration::from_secs(3600)),
            &b"review"[..],
        ))
        .await
        .unwrap();

    let got = reminders.get(&key).await.unwrap().unwrap();
    assert_eq!(got.payload.as_ref(), b"cancel");
    assert_eq!(
        got.when,
        When::At(aether_core::reminder::from_unix_millis(
            unix_millis(at).unwrap()
        ))
    );
    let names: Vec<String> = reminders
        .list("order", "order-1")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key.name)
        .collect();
    assert_eq!(names, ["payment-deadline", "review"]);
    assert!(reminders.list("order", "order-2").await.unwrap().is_empty());

    let mut due = reminders.due().await.unwrap();
    let firing = next(&mut due).await;
    assert_eq!(firing.firing.key, key);
    assert!(!firing.firing.repeats);
    assert_eq!(firing.firing.payload.as_ref(), b"cancel");
    assert_eq!(unix_millis(firing.firing.due), unix_millis(at));
    let skew = SystemTime::now().duration_since(at).unwrap_or_default();
    assert!(skew < Duration::from_secs(3), "fired {skew:?} late");
    assert_eq!(
        firing.firing.command_id().as_str(),
        format!("rem:{}:payment-deadline", unix_millis(at).unwrap())
    );
    firing.settle(Settled::Delivered).await.unwrap();

    // A one-off reminder is gone once it fired; the other stays.
    assert!(reminders.get(&key).await.unwrap().is_none());
    assert_eq!(reminders.list("order", "order-1").await.unwrap().len(), 1);
    assert!(reminders.cancel(&later).await.unwrap());
    assert!(!reminders.cancel(&later).await.unwrap());
    assert!(reminders.list("order", "order-1").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_firing_comes_back_and_a_retried_one_keeps_its_id() {
    let server = NatsServer::start().await.unwrap();
    let reminders = open(&server, "shop").await;
    let key = ReminderKey::new("order", "o-7", "nudge");
    reminders
        .set(&Reminder::new(
            key.clone(),
            When::after(Duration::ZERO),
            &b"x"[..],
        ))
        .await
        .unwrap();
    let mut due = reminders.due().await.unwrap();
    let first = next(&mut due).await;
    let id = first.firing.command_id();
    // Dropped without settling (a node killed mid-delivery): handed out again after ack wait.
    drop(first);
    let again = next(&mut due).await;
    assert_eq!(again.firing.command_id(), id);
    assert_eq!(again.firing.delivery, 2);
    again
        .settle(Settled::Retry(Duration::from_millis(100)))
        .await
        .unwrap();
    let third = next(&mut due).await;
    assert_eq!(third.firing.command_id(), id);
    third.settle(Settled::Delivered).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(3), due.next()).await;
    assert!(quiet.is_err(), "a settled firing came back: {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeating_reminder_fires_each_tick_with_its_own_id_until_cancelled() {
    let server = NatsServer::start().await.unwrap();
    let reminders = open(&server, "shop").await;
    let key = ReminderKey::new("subscription", "sub-1", "renew");
    reminders
        .set(&Reminder::new(
            key.clone(),
            When::every(Duration::from_secs(1)),
            &b"renew"[..],
        ))
        .await
        .unwrap();
    let mut due = reminders.due().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let firing = next(&mut due).await;
        assert!(firing.firing.repeats);
        ids.push(firing.firing.command_id());
        firing.settle(Settled::Delivered).await.unwrap();
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(reminders.cancel(&key).await.unwrap());
    // At most the firing already produced may arrive; none after that.
    let mut after = 0;
    while let Ok(Some(Ok(firing))) = tokio::time::timeout(Duration::from_secs(3), due.next()).await
    {
        after += 1;
        firing.settle(Settled::Delivered).await.unwrap();
    }
    assert!(after <= 1, "{after} firings after the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_round_trip_and_bad_ones_are_refused() {
    let server = NatsServer::start().await.unwrap();
    let reminders = open(&server, "shop").await;
    let hostile = ["a.b", "*", ">", "x y", "ünï", "_", "$JS.API", "%2E"];
    for (i, name) in hostile.iter().enumerate() {
        let key = ReminderKey::new("ty.pe>", "actor.*>", *name);
        reminders
            .set(&Reminder::new(
                key.clone(),
                When::after(Duration::from_secs(600)),
                vec![i as u8],
            ))
            .await
            .unwrap();
        assert_eq!(reminders.get(&key).await.unwrap().unwrap().key, key);
    }
    assert_eq!(
        reminders.list("ty.pe>", "actor.*>").await.unwrap().len(),
        hostile.len()
    );
    assert!(reminders.list("ty.pe", "actor").await.unwrap().is_empty());

    for bad in [
        Reminder::new(
            ReminderKey::new("t", "a", ""),
            When::after(Duration::ZERO),
            &b""[..],
        ),
        Reminder::new(
            ReminderKey::new("t", "a", "n\r\n"),
            When::after(Duration::ZERO),
            &b""[..],
        ),
        Reminder::new(
            ReminderKey::new("t", "a", "big"),
            When::after(Duration::ZERO),
            vec![0; aether_core::reminder::MAX_PAYLOAD_BYTES + 1],
        ),
        Reminder::new(
            ReminderKey::new("t", "a", "fast"),
            When::every(Duration::from_millis(10)),
            &b""[..],
        ),
    ] {
        let err = reminders.set(&bad).await.unwrap_err();
        assert!(matches!(err, ReminderError::Invalid { .. }), "{err}");
    }
    // Longest id and name, all escaped: a subject past the server's request line is refused
    // before it is sent (the server would close the connection), and the connection lives on.
    let long = ReminderKey::new("t", "ü".repeat(512), "é".repeat(128));
    let err = reminders
        .set(&Reminder::new(
            long.clone(),
            When::after(Duration::ZERO),
            &b""[..],
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("request line"), "{err}");
    assert!(matches!(
        reminders.get(&long).await,
        Err(ReminderError::Invalid { .. })
    ));
    assert!(reminders.list("t", "a").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_malformed_firing_is_dropped_and_the_feed_goes_on() {
    let server = NatsServer::start().await.unwrap();
    let reminders = open(&server, "shop").await;
    let client = server.connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    // A message on a firing subject without the reminder headers, and one with an undecodable
    // token: both dropped with an error item.
    let prefix = "ar.shop.f.";
    for subject in [
        format!("{prefix}order.o-1.n"),
        format!("{prefix}order.o_Z.n"),
    ] {
        js.publish(subject, "junk".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let key = ReminderKey::new("order", "o-1", "good");
    reminders
        .set(&Reminder::new(
            key.clone(),
            When::after(Duration::ZERO),
            &b"ok"[..],
        ))
        .await
        .unwrap();
    let mut due = reminders.due().await.unwrap();
    let mut malformed = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), due.next())
            .await
            .unwrap()
            .unwrap()
        {
            Err(ReminderError::Malformed { .. }) => malformed += 1,
            Err(e) => panic!("{e}"),
            Ok(firing) => {
                assert_eq!(firing.firing.key, key);
                firing.settle(Settled::Delivered).await.unwrap();
                break;
            }
        }
    }
    assert_eq!(malformed, 2);
}
