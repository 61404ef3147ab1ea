//! A model policy with a deadline ("when OrderPlaced and no PaymentReceived within 1s then
//! CancelOrder"), kept as a reminder in JetStream by a real nats-server and delivered by the
//! dispatcher: an unpaid order is cancelled once, a paid one is not.

#![cfg(feature = "model")]
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aether_core::EventStore;
use aether_core::reminder::ReminderStore;
use aether_model::{Format, Model, ProblemKind};
use aether_runtime::reminders::Dispatcher;
use aether_runtime::{Actor, ModelActor, ModelRuntime, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::nats::NatsServer;
use serde_json::json;

const MODEL: &str = r#"
name: payments
contexts:
  - name: sales
    actors:
      - name: Customer
        issues: [PlaceOrder, Pay]
    aggregates:
      - name: Order
        commands:
          - name: PlaceOrder
            fields: [{ name: sku, type: string }]
            emits: [OrderPlaced]
          - name: Pay
            emits: [PaymentReceived]
          - name: CancelOrder
            fields: [{ name: sku, type: string, required: false }]
            emits: [OrderCancelled]
    events:
      - name: OrderPlaced
        fields: [{ name: sku, type: string }]
      - name: PaymentReceived
      - name: OrderCancelled
        fields: [{ name: sku, type: string, required: false }]
    policies:
      - name: CancelUnpaid
        when: OrderPlaced
        unless: [PaymentReceived]
        within: 1s
        issue: CancelOrder
        to: Order
"#;

#[test]
fn a_deadline_must_parse_and_unless_needs_one() {
    let bad = MODEL.replace("within: 1s", "within: soon");
    let problems = Model::parse(&bad, Format::Yaml)
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        problems
            .problems
            .iter()
            .any(|p| matches!(p.kind, ProblemKind::InvalidDeadline { .. })),
        "{problems}"
    );
    let no_deadline = MODEL.replace("        within: 1s\n", "");
    let problems = Model::parse(&no_deadline, Format::Yaml)
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        problems.to_string().contains("`unless` needs a deadline"),
        "{problems}"
    );
    for (text, secs) in [("30m", 1800), ("1h30m", 5400), ("2d", 172_800), ("45s", 45)] {
        assert_eq!(
            aether_model::parse_duration(text),
            Some(Duration::from_secs(secs))
        );
    }
    for text in ["", "0s", "m", "30", "1m2h", "1.5h", "-1s"] {
        assert_eq!(aether_model::parse_duration(text), None, "{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_is_cancelled_once_at_its_deadline_and_a_paid_one_is_not() {
    let server = NatsServer::start().await.unwrap();
    let reminders: Arc<dyn ReminderStore> = Arc::new(
        JetStreamReminders::open(
            server.connect().await.unwrap(),
            "shop",
            &JetStreamConfig::default(),
        )
        .await
        .unwrap(),
    );
    let store = Arc::new(InMemoryEventStore::new());
    let model = Model::parse(MODEL, Format::Yaml).unwrap();
    let models = ModelRuntime::new(
        model,
        Runtime::<ModelActor>::builder(store.clone()).reminders(reminders.clone()),
    )
    .unwrap();
    let dispatcher = Dispatcher::new(reminders)
        .target(ModelActor::TYPE, models.deadlines())
        .start();

    for id in ["unpaid", "paid"] {
        models
            .send("Order", id, "PlaceOrder", json!({"sku": "SKU-1"}))
            .await
            .unwrap();
    }
    models
        .send("Order", "paid", "Pay", json!({}))
        .await
        .unwrap();
    // The policies see every stored event (twice: a redelivery sets the same deadline again).
    for _ in 0..2 {
        for id in ["Order:unpaid", "Order:paid"] {
            for event in store.get_events(id, 1).await.unwrap() {
                models.react(&event).await.unwrap();
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (order, _) = models.state("Order", "unpaid").await.unwrap();
        if order.last_event.as_deref() == Some("OrderCancelled") {
            assert_eq!(order.fields["sku"], json!("SKU-1"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unpaid order was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every deadline settled: the paid order's was voided by its payment.
    while dispatcher.stats().delivered < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            dispatcher.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (paid, _) = models.state("Order", "paid").await.unwrap();
    assert_eq!(paid.last_event.as_deref(), Some("PaymentReceived"));
    let cancels = store
        .get_events("Order:unpaid", 1)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type() == "OrderCancelled")
        .count();
    assert_eq!(cancels, 1);
    dispatcher.stop().await;
}
