//! Reminders: how late firings are delivered, and what storing reminders costs the server, each
//! against raw async-nats in the same run, on one R1 file-store nats-server.
//!
//! | row | Aether | baseline |
//! | --- | --- | --- |
//! | `reminders.skew.<n>` (p50 and p99) | n reminders due over a spread, set through `Reminders`, delivered by the `Dispatcher` as commands to a runtime (memory event store): delivery time minus due time | the same schedule messages published raw, firings read by a raw pull consumer and double-acked (512 at once): receipt minus due |
//! | `reminders.storage.<n>` (server memory and stream bytes) | n reminders set far in the future | n plain messages of the same subjects and body in a limits stream |
//!
//! Run with `cargo xtask bench -p aether-runtime --bench reminders`. Without `--bench` (as
//! `cargo test --all-targets` runs it) it is a smoke run: 200 reminders, 2,000 stored. With
//! `AETHER_BENCH_QUICK`: 10k and 100k for skew, 100k stored; otherwise 10k and 100k for skew and
//! 1M stored.

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aether_core::reminder::{
    Firing, ReminderKey, ReminderStore, Settled, When, from_unix_millis, unix_millis,
};
use aether_runtime::reminders::{Deliver, Dispatcher, Reminders, RuntimeTarget};
use aether_runtime::{Actor, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, quick, record_row, two_workers};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// An actor that counts its beats.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Beat(u64);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Beat {
    const TYPE: &'static str = "beat";
    type Command = ();
    type Event = u8;
    type Error = Never;
    fn handle(&self, (): &()) -> Result<Vec<u8>, Never> {
        Ok(vec![1])
    }
    fn apply(&mut self, _: &u8) {
        self.0 += 1;
    }
}

/// Records each delivered firing's lateness (seconds).
#[derive(Debug)]
struct Timed {
    inner: RuntimeTarget<Beat>,
    late: Mutex<Vec<f64>>,
}

#[async_trait::async_trait]
impl Deliver for Timed {
    async fn deliver(&self, firing: &Firing) -> Settled {
        let settled = self.inner.deliver(firing).await;
        if settled == Settled::Delivered {
            self.late.lock().unwrap().push(lateness(firing.due));
        }
        settled
    }
}

fn lateness(due: SystemTime) -> f64 {
    match SystemTime::now().duration_since(due) {
        Ok(late) => late.as_secs_f64(),
        Err(early) => -early.duration().as_secs_f64(),
    }
}

/// The `q` quantile (0..=1) of `values`, sorted in place.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

/// The due time of reminder `i` of `n`, spread over `spread` from `first`, to the millisecond.
fn due(first: SystemTime, spread: Duration, i: usize, n: usize) -> SystemTime {
    let offset = spread.mul_f64(i as f64 / n as f64);
    from_unix_millis(unix_millis(first).unwrap() + offset.as_millis() as u64)
}

/// How long setting `n` reminders takes at most, with room (measured: ~8,000/s here).
fn lead(n: usize) -> Duration {
    Duration::from_secs(3) + Duration::from_secs_f64(n as f64 / 3_000.0)
}

async fn aether_skew(server: &NatsServer, store: &str, n: usize, spread: Duration) -> Vec<f64> {
    let client = server.connect().await.unwrap();
    let reminders: Arc<dyn ReminderStore> = Arc::new(
        JetStreamReminders::open(client, store, &JetStreamConfig::default())
            .await
            .unwrap(),
    );
    let runtime = Runtime::<Beat>::builder(Arc::new(InMemoryEventStore::new()))
        .idle_timeout(None)
        .build();
    let timed = Arc::new(Timed {
        inner: RuntimeTarget::new(runtime.clone()),
        late: Mutex::new(Vec::with_capacity(n)),
    });
    let dispatcher = Dispatcher::new(reminders.clone())
        .target(Beat::TYPE, timed.clone())
        .start();
    let typed = Reminders::<Beat>::new(reminders);
    let first = SystemTime::now() + lead(n);
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let typed = typed.clone();
            async move {
                typed
                    .remind(
                        &format!("b-{i}"),
                        "beat",
                        When::At(due(first, spread, i, n)),
                        &(),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    assert!(
        SystemTime::now() < first,
        "setting took longer than the lead"
    );
    let deadline = first + spread + Duration::from_secs(120);
    while timed.late.lock().unwrap().len() < n {
        assert!(SystemTime::now() < deadline, "firings missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dispatcher.stop().await;
    runtime.shutdown().await;
    std::mem::take(&mut *timed.late.lock().unwrap())
}

/// The same schedules published raw, read by a raw pull consumer.
async fn raw_skew(server: &NatsServer, name: &str, n: usize, spread: Duration) -> Vec<f64> {
    let js = jetstream::new(server.connect().await.unwrap());
    let prefix = format!("raw.{name}");
    let stream = js
        .create_stream(stream::Config {
            name: format!("RAW_{name}"),
            subjects: vec![format!("{prefix}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            allow_rollup: true,
            allow_message_schedules: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            filter_subject: format!("{prefix}.f.>"),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let first = SystemTime::now() + lead(n);
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let js = js.clone();
            let prefix = prefix.clone();
            async move {
                let at = unix_millis(due(first, spread, i, n)).unwrap();
                let mut headers = HeaderMap::new();
                let rfc =
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                        .unwrap()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap();
                headers.insert("Nats-Schedule", format!("@at {rfc}").as_str());
                headers.insert("Nats-Schedule-Target", format!("{prefix}.f.{i}").as_str());
                headers.insert("Nats-Schedule-Rollup", "sub");
                headers.insert("Due", at.to_string().as_str());
                js.publish_with_headers(format!("{prefix}.s.{i}"), headers, vec![0x90].into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        })
        .await;
    let late = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .unwrap();
    let mut acks = futures::stream::FuturesUnordered::new();
    while late.lock().unwrap().len() < n {
        tokio::select! {
            Some(message) = messages.next() => {
                let message = message.unwrap();
                let late = late.clone();
                acks.push(async move {
                    let at: u64 = message.headers.as_ref().unwrap().get("Due").unwrap().as_str().parse().unwrap();
                    message.double_ack().await.unwrap();
                    late.lock().unwrap().push(lateness(from_unix_millis(at)));
                });
            }
            Some(()) = acks.next(), if !acks.is_empty() => {}
        }
        while acks.len() >= 512 {
            acks.next().await;
        }
    }
    std::mem::take(&mut *late.lock().unwrap())
}

/// The server's resident memory and the stream's bytes after storing `n` reminders far in the
/// future (Aether) or `n` plain messages of the same subjects and body (baseline).
async fn storage(n: usize) -> ((u64, u64), (u64, u64)) {
    let far = SystemTime::now() + Duration::from_secs(30 * 86_400);
    let aether = {
        let server = NatsServer::start().await.unwrap();
        let before = server.resident_bytes().unwrap_or(0);
        let reminders = JetStreamReminders::open(
            server.connect().await.unwrap(),
            "stored",
            &JetStreamConfig::default(),
        )
        .await
        .unwrap();
        let typed = Reminders::<Beat>::new(Arc::new(reminders.clone()));
        futures::stream::iter(0..n)
            .for_each_concurrent(128, |i| {
                let typed = typed.clone();
                async move {
                    typed
                        .remind(&format!("b-{i}"), "beat", When::At(far), &())
                        .await
                        .unwrap();
                }
            })
            .await;
        let js = jetstream::new(server.connect().await.unwrap());
        let bytes = js
            .get_stream(reminders.stream_name())
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .bytes;
        let grown = server.resident_bytes().unwrap_or(0).saturating_sub(before);
        (grown, bytes)
    };
    let baseline = {
        let server = NatsServer::start().await.unwrap();
        let before = server.resident_bytes().unwrap_or(0);
        let js = jetstream::new(server.connect().await.unwrap());
        let stream = js
            .create_stream(stream::Config {
                name: "PLAIN".into(),
                subjects: vec!["ar.stored.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let key = |i: usize| ReminderKey::new(Beat::TYPE, format!("b-{i}"), "beat");
        futures::stream::iter(0..n)
            .for_each_concurrent(128, |i| {
                let js = js.clone();
                async move {
                    let k = key(i);
                    // The reminder's subject and body, without the schedule headers.
                    let subject = format!(
                        "ar.stored.s.{}.{}.{}",
                        aether_nats::token::encode(&k.actor_type),
                        aether_nats::token::encode(&k.actor_id),
                        aether_nats::token::encode(&k.name)
                    );
                    js.publish(subject, vec![0xc0].into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            })
            .await;
        let mut stream = stream;
        let bytes = stream.info().await.unwrap().state.bytes;
        let grown = server.resident_bytes().unwrap_or(0).saturating_sub(before);
        (grown, bytes)
    };
    (aether, baseline)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (skews, stored): (Vec<(usize, Duration)>, usize) = if smoke {
        (vec![(200, Duration::from_secs(1))], 2_000)
    } else if quick() {
        (
            vec![
                (10_000, Duration::from_secs(10)),
                (100_000, Duration::from_secs(60)),
            ],
            100_000,
        )
    } else {
        (
            vec![
                (10_000, Duration::from_secs(10)),
                (100_000, Duration::from_secs(60)),
            ],
            1_000_000,
        )
    };
    if smoke {
        println!("smoke run (no --bench): tiny sizes; not a measurement");
    }
    let rt = two_workers().unwrap();
    rt.block_on(async {
        println!("| reminders | due over | Aether p50 / p99 late | raw p50 / p99 late | p99 ratio |");
        println!("| --- | --- | --- | --- | --- |");
        for (i, (n, spread)) in skews.into_iter().enumerate() {
            let server = NatsServer::start().await.unwrap();
            let mut aether = aether_skew(&server, &format!("skew{i}"), n, spread).await;
            let mut raw = raw_skew(&server, &format!("skew{i}"), n, spread).await;
            let (a50, a99) = (quantile(&mut aether, 0.5), quantile(&mut aether, 0.99));
            let (r50, r99) = (quantile(&mut raw, 0.5), quantile(&mut raw, 0.99));
            println!(
                "| {n} | {spread:?} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.2}x |",
                a50 * 1e3,
                a99 * 1e3,
                r50 * 1e3,
                r99 * 1e3,
                a99 / r99
            );
            for (q, a, r) in [("p50", a50, r50), ("p99", a99, r99)] {
                record_row(
                    &ReportRow::new(
                        format!("reminders.skew.{n}.{q}"),
                        format!(
                            "{q} lateness of {n} reminders due over {spread:?}, delivered as commands by the dispatcher (memory event store)"
                        ),
                        Better::Lower,
                        Figure::new(a * 1e3, "ms"),
                        "raw schedules read by a raw pull consumer",
                        Figure::new(r * 1e3, "ms"),
                    )
                    .note("the server's scheduler fires at 250 ms granularity at best"),
                );
            }
        }
        let ((a_mem, a_bytes), (b_mem, b_bytes)) = storage(stored).await;
        println!();
        println!("| stored | server memory grown | stream bytes | per reminder |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| {stored} reminders | {:.0} MiB | {:.0} MiB | {:.0} B memory, {:.0} B stored |",
            a_mem as f64 / 1048576.0,
            a_bytes as f64 / 1048576.0,
            a_mem as f64 / stored as f64,
            a_bytes as f64 / stored as f64
        );
        println!(
            "| {stored} plain messages | {:.0} MiB | {:.0} MiB | {:.0} B memory, {:.0} B stored |",
            b_mem as f64 / 1048576.0,
            b_bytes as f64 / 1048576.0,
            b_mem as f64 / stored as f64,
            b_bytes as f64 / stored as f64
        );
        for (what, a, b, unit) in [
            ("memory", a_mem as f64, b_mem as f64, "B"),
            ("bytes", a_bytes as f64, b_bytes as f64, "B"),
        ] {
            record_row(&ReportRow::new(
                format!("reminders.storage.{what}"),
                format!("server {what} for {stored} reminders set far in the future"),
                Better::Lower,
                Figure::new(a / stored as f64, unit),
                "plain messages of the same subjects and body",
                Figure::new(b / stored as f64, unit),
            ));
        }
    });
}
