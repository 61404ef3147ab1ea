//! Connecting with an nkey and with a credentials file, as docs/security.md ("nkeys and
//! credentials files") shows. An nkey user (the key made with the `nkeys` crate) with the
//! writer's block opens its tenant's store and uses it; a key the server does not know is refused
//! at connect. A server in operator mode (operator, account and user JWTs signed here with
//! `nkeys`, no `nsc`, a memory resolver) gives each tenant its own account: each tenant's service
//! connects with its credentials file and uses a store of the same name as the other's, and
//! neither sees anything of the other's.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use aether_core::{Event, EventStore, Namespace};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::tenancy::{self, Authorization, ConfiguredServer, Role};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use nkeys::KeyPair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_user_opens_its_store_and_an_unknown_key_is_refused() {
    let user = KeyPair::new_user();
    // The writer's block of docs/security.md (for store `events`, namespace `tenant-a`).
    let server = Authorization::with_operator()
        .nkey_user(
            &user.public_key(),
            &Role::Writer.permissions("tenant-a").unwrap(),
        )
        .start("nkeys")
        .await
        .unwrap();
    let config = || {
        JetStreamConfig::default()
            .namespace(Namespace::new("tenant-a").unwrap())
            .request_timeout(Duration::from_secs(5))
    };
    let operator = tenancy::connect_operator(&server).await.unwrap();
    JetStreamEventStore::with_config(operator, "events", config())
        .await
        .unwrap();

    // As in docs/security.md: the seed is the secret, the server knows only the public key.
    let seed = user.seed().unwrap();
    let client = tenancy::connect_with(
        &server,
        async_nats::ConnectOptions::new().nkey(seed),
        Some("_INBOX_tenant-a"),
    )
    .await
    .unwrap();
    let store = JetStreamEventStore::with_config(client, "events", config())
        .await
        .unwrap();
    store
        .save_event(Event::new("order-1", "Placed", 1, &"by nkey").unwrap())
        .await
        .unwrap();
    assert_eq!(store.get_latest_version("order-1").await.unwrap(), 1);
    assert_eq!(store.get_events("order-1", 1).await.unwrap().len(), 1);

    // A key the server does not know is refused at connect.
    let stranger = async_nats::ConnectOptions::new()
        .nkey(KeyPair::new_user().seed().unwrap())
        .connect(server.url())
        .await;
    assert!(stranger.is_err(), "an unknown nkey connected");
}

/// A JWT as NATS reads it: header, claims, and the ed25519 signature of both by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let signed = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

/// An account with JetStream, its JWT signed by `operator`.
fn account_jwt(operator: &KeyPair, account: &KeyPair, name: &str) -> String {
    jwt(
        operator,
        &account.public_key(),
        name,
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
            },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2
        }),
    )
}

/// A credentials file for a new user of `account`: its JWT and its seed, in the decorated
/// form `nsc` writes.
fn credentials(account: &KeyPair, name: &str, path: &Path) {
    let user = KeyPair::new_user();
    let token = jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        }),
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    std::fs::write(path, creds).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_their_own_accounts_connect_with_credentials_files_and_see_nothing_of_each_other()
 {
    let dir = tempfile::tempdir().unwrap();
    let operator = KeyPair::new_operator();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "aether-test",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    let (tenant_a, tenant_b) = (KeyPair::new_account(), KeyPair::new_account());
    // The server's own account (JetStream needs one in operator mode).
    let system = KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({ "type": "account", "version": 2 }),
    );
    let conf = format!(
        "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: {system_jwt}\n  {}: {}\n  {}: {}\n}}\n",
        system.public_key(),
        system.public_key(),
        tenant_a.public_key(),
        account_jwt(&operator, &tenant_a, "tenant-a"),
        tenant_b.public_key(),
        account_jwt(&operator, &tenant_b, "tenant-b"),
    );
    credentials(&tenant_a, "service-a", &dir.path().join("tenant-a.creds"));
    credentials(&tenant_b, "service-b", &dir.path().join("tenant-b.creds"));
    // A user of an account the operator never signed.
    credentials(
        &KeyPair::new_account(),
        "stranger",
        &dir.path().join("stranger.creds"),
    );
    let server = ConfiguredServer::start("creds", &conf).await.unwrap();

    // As in docs/security.md: the client reads the JWT and the seed from the file.
    let connect = |file: &'static str| {
        let path = dir.path().join(file);
        let url = server.url();
        async move {
            async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .unwrap()
                .connect(url)
                .await
                .unwrap()
        }
    };
    let stranger =
        async_nats::ConnectOptions::with_credentials_file(dir.path().join("stranger.creds"))
            .await
            .unwrap()
            .connect(server.url())
            .await;
    assert!(stranger.is_err(), "a user of an unknown account connected");
    let a = connect("tenant-a.creds").await;
    let b = connect("tenant-b.creds").await;
    // Each account is a world of its own: the same store name, no namespace needed.
    let store_a = JetStreamEventStore::new(a.clone(), "events").await.unwrap();
    let store_b = JetStreamEventStore::new(b, "events").await.unwrap();
    store_a
        .save_event(Event::new("order-1", "Placed", 1, &"a's").unwrap())
        .await
        .unwrap();
    let mut everything_a = a.subscribe(">").await.unwrap();
    a.flush().await.unwrap();
    a.request("$JS.API.STREAM.INFO.events", "".into())
        .await
        .unwrap();
    store_b
        .save_event(Event::new("secret-1", "Kept", 1, &"b's").unwrap())
        .await
        .unwrap();
    assert_eq!(store_b.get_latest_version("secret-1").await.unwrap(), 1);
    assert_eq!(store_a.get_latest_version("secret-1").await.unwrap(), 0);
    assert!(store_a.get_events("secret-1", 1).await.unwrap().is_empty());
    assert_eq!(store_a.get_events("order-1", 1).await.unwrap().len(), 1);
    assert!(store_b.get_events("order-1", 1).await.unwrap().is_empty());
    // A `>` subscriber in A's account hears A's own marker, published after B's append was
    // acknowledged, and nothing of B's before it.
    a.publish("probe.marker", "marker".into()).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), everything_a.next())
            .await
            .expect("the marker arrives")
            .expect("the subscription is open");
        assert!(
            !m.subject.as_str().contains("secret-1"),
            "tenant A heard tenant B's append on {}",
            m.subject
        );
        if m.subject.as_str() == "probe.marker" {
            break;
        }
    }
}
