//! The nats-server harness against real servers: a single node and a 3-node cluster.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aether_testkit::nats::{NatsCluster, NatsServer, server_binary};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

/// Sends a request through `client` until a responder answers; "no responders" means interest has
/// not reached this node yet, and is answered at once by the server (no sleeping).
async fn request_until_answered(client: &async_nats::Client, subject: &str, body: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client
            .request(subject.to_owned(), body.to_owned().into())
            .await
        {
            Ok(reply) => return String::from_utf8(reply.payload.to_vec()).unwrap(),
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(e.kind(), async_nats::RequestErrorKind::NoResponders),
                    "unexpected request error: {e}"
                );
                client.flush().await.unwrap();
            }
            Err(e) => panic!("no answer on {subject} within {WAIT:?}: {e}"),
        }
    }
}

/// Answers every request on `subject` with "<node>:<body>".
async fn echo(
    client: async_nats::Client,
    subject: &str,
    node: &str,
) -> tokio::task::JoinHandle<()> {
    let mut sub = client.subscribe(subject.to_owned()).await.unwrap();
    client.flush().await.unwrap();
    let node = node.to_owned();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let body = format!("{node}:{}", String::from_utf8_lossy(&msg.payload));
                client.publish(reply, body.into()).await.unwrap();
            }
        }
    })
}

#[tokio::test]
async fn single_server_publishes_and_restarts() {
    let mut server = NatsServer::start().await.expect("start nats-server");
    let bin = server_binary().unwrap();
    assert!(
        aether_testkit::nats::parse_version(&bin.version).unwrap()
            >= aether_testkit::nats::MIN_VERSION
    );

    let client = server.connect().await.unwrap();
    let mut sub = client.subscribe("harness.single").await.unwrap();
    client
        .publish("harness.single", "hello".into())
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&msg.payload[..], b"hello");

    // JetStream is on and storage survives a restart on the same port.
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HARNESS".into(),
        subjects: vec!["harness.js".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("harness.js", "stored".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let port = server.port();
    server.kill().await.unwrap();
    assert!(!server.is_running());
    server.restart().await.unwrap();
    assert_eq!(server.port(), port);

    let client = server.connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("HARNESS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn cluster_of_three_routes_between_all_nodes() {
    let mut cluster = NatsCluster::start(3).await.expect("start 3-node cluster");
    assert_eq!(cluster.nodes().len(), 3);

    // A responder on each node; a request published through every node reaches every responder.
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let client = node.connect().await.unwrap();
        echo(client.clone(), &format!("harness.node{i}"), node.name()).await;
        clients.push(client);
    }
    for (from, client) in clients.iter().enumerate() {
        for to in 0..3 {
            let answer = request_until_answered(
                client,
                &format!("harness.node{to}"),
                &format!("from{from}"),
            )
            .await;
            assert_eq!(answer, format!("node-{to}:from{from}"));
        }
    }

    // A client that knows every node reaches them all too.
    let any = cluster.connect().await.unwrap();
    let answer = request_until_answered(&any, "harness.node1", "via-any").await;
    assert_eq!(answer, "node-1:via-any");

    // JetStream works with R3 across the cluster. Creating a stream is idempotent, so it is
    // retried while the cluster is busy: on a loaded machine (a CI run, its disk still writing
    // back earlier tests' files) the request can time out, and a meta leader that has not yet
    // had every peer's statistics answers "no suitable peers for placement" (the retries are aether-nats's one settle policy).
    let js = async_nats::jetstream::new(clients[0].clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    aether_nats::settle::while_settling("creating an R3 stream", Duration::from_secs(60), || {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "HARNESS_R3".into(),
            subjects: vec!["harness.r3".into()],
            num_replicas: 3,
            ..Default::default()
        })
    })
    .await
    .unwrap_or_else(|e| panic!("creating an R3 stream: {e}"));
    // A new R3 stream elects its own leader; its first acknowledgement can miss the client's
    // 5 s timeout too. Retried with one message id, it is stored once.
    let id = uuid::Uuid::new_v4().to_string();
    let ack = loop {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload("replicated".into())
            .message_id(id.as_str());
        let ack = match js.send_publish("harness.r3", message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => break ack,
            Err(e) if tokio::time::Instant::now() < deadline => eprintln!("retrying: {e}"),
            Err(e) => panic!("the R3 stream never acknowledged: {e}"),
        }
    };
    assert_eq!(ack.sequence, 1);

    // Pause a node: the rest still serve; resume it and it answers again.
    cluster.node(1).pause().unwrap();
    let answer = request_until_answered(&clients[2], "harness.node0", "while-paused").await;
    assert_eq!(answer, "node-0:while-paused");
    cluster.node(1).resume().unwrap();
    let answer = request_until_answered(&clients[0], "harness.node1", "resumed").await;
    assert_eq!(answer, "node-1:resumed");

    // Kill and restart a node on its port: a new client there reaches the others.
    cluster.node_mut(2).kill().await.unwrap();
    cluster.node_mut(2).restart().await.unwrap();
    let client = cluster.node(2).connect().await.unwrap();
    let answer = request_until_answered(&client, "harness.node0", "after-restart").await;
    assert_eq!(answer, "node-0:after-restart");
}

#[test]
fn missing_binary_error_says_how_to_get_one() {
    let err = aether_testkit::nats::HarnessError::BinaryNotFound {
        detail: "nothing".into(),
    };
    assert!(err.to_string().contains("cargo xtask nats"), "{err}");
}
