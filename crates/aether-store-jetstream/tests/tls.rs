//! The store over TLS: a nats-server that requires TLS with a certificate from the test's own
//! CA (made with rcgen, no openssl). A client that trusts the CA opens the store and uses it; one
//! that does not is refused at connect with a certificate error, not a timeout. The server
//! configuration and the client code are the ones docs/security.md ("TLS") shows.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use aether_core::{Event, EventStore};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::NatsServer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// Writes `ca.pem`, `server-cert.pem` and `server-key.pem` into `dir`: a CA and a server
/// certificate for 127.0.0.1 and localhost signed by it.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server-cert.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), server_key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_and_an_untrusted_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    // As in docs/security.md: the server requires TLS.
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
        path("server-cert.pem"),
        path("server-key.pem")
    );
    std::fs::write(dir.path().join("server.conf"), conf).unwrap();
    let server = NatsServer::start_with("tls", vec!["-c".into(), path("server.conf")])
        .await
        .unwrap();
    let url = format!("tls://127.0.0.1:{}", server.port());

    // A client that trusts the CA: the store works as on a plain connection.
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.path().join("ca.pem"))
        .require_tls(true)
        .connect(&url)
        .await
        .unwrap();
    let store = JetStreamEventStore::new(client, "secure").await.unwrap();
    store
        .save_event(Event::new("order-1", "Placed", 1, &"over tls").unwrap())
        .await
        .unwrap();
    assert_eq!(store.get_events("order-1", 1).await.unwrap().len(), 1);

    // A client without the CA is refused promptly, and says why.
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .connect(&url),
    )
    .await
    .expect("refused within 5 s, not hanging");
    let error = refused.unwrap_err().to_string();
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
}
