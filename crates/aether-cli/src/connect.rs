//! Connecting: the connection options to an async-nats client, and the store's names.

use std::time::Duration;

use std::sync::OnceLock;

use aether_core::Namespace;
use aether_nats::permissions::{PermissionWatch, Refusal};
use aether_store_jetstream::{JetStreamEventStore, layout};
use async_nats::jetstream;

use crate::cli::Connection;
use crate::failure::Failure;

/// A connection and the store the command is about.
pub(crate) struct Context {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) store: String,
    pub(crate) namespace: Option<Namespace>,
    /// The stream's name, from the store's name and namespace.
    pub(crate) stream: String,
}

impl Context {
    /// Connects with `connection`'s options; checks the store name and namespace first.
    pub(crate) async fn new(
        connection: &Connection,
        store: &str,
        namespace: Option<String>,
    ) -> Result<Self, Failure> {
        layout::validate_store_name(store)
            .map_err(|e| Failure::Input(format!("--store {store:?}: {e}")))?;
        let namespace = namespace
            .map(|ns| {
                Namespace::new(&ns).map_err(|e| Failure::Input(format!("--namespace {ns:?}: {e}")))
            })
            .transpose()?;
        let stream = layout::stream_name(store, namespace.as_ref());
        let client = connect(connection).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(connection.timeout.max(1)));
        Ok(Self {
            client,
            js,
            store: store.to_owned(),
            namespace,
            stream,
        })
    }

    /// The stream, or a failure saying it is not there.
    pub(crate) async fn stream(&self) -> Result<jetstream::stream::Stream, Failure> {
        match find_stream(&self.js, &self.stream).await? {
            Some(stream) => Ok(stream),
            None => Err(self.no_stream()),
        }
    }

    fn no_stream(&self) -> Failure {
        Failure::NotFound(format!(
            "no stream `{}` on this server: check --store ({}) and --namespace ({}); `nats stream ls` lists the streams",
            self.stream,
            self.store,
            self.namespace
                .as_ref()
                .map_or_else(|| "none".to_owned(), ToString::to_string)
        ))
    }

    /// The store, opened only when its stream exists (a read never creates a stream).
    pub(crate) async fn existing_store(&self) -> Result<JetStreamEventStore, Failure> {
        self.stream().await?;
        self.open_store().await
    }

    /// The store (created if absent: for writing commands).
    pub(crate) async fn open_store(&self) -> Result<JetStreamEventStore, Failure> {
        let store = match &self.namespace {
            Some(ns) => {
                JetStreamEventStore::with_namespace(self.client.clone(), &self.store, ns.clone())
                    .await
            }
            None => JetStreamEventStore::new(self.client.clone(), &self.store).await,
        };
        store.map_err(|e| Failure::nats(format!("opening store {}", self.stream), e))
    }
}

/// Stream `name`, or `None` when the server has no such stream.
pub(crate) async fn find_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<jetstream::stream::Stream>, Failure> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(Failure::nats(format!("reading stream {name}"), e)),
        },
    }
}

/// The connection's permission refusals (the server reports them to the connection only, and
/// the refused request then times out): a failed command names them.
static REFUSALS: OnceLock<PermissionWatch> = OnceLock::new();

/// What the server refused on this process's connection, most recent last.
pub(crate) fn refusals() -> Vec<Refusal> {
    REFUSALS
        .get()
        .map(PermissionWatch::remembered)
        .unwrap_or_default()
}

/// The seed in an nkey file: its first line that is not empty or a comment.
fn nkey_seed(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("--nkey {}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(['#', '-', '*', '/']))
        .filter(|seed| seed.starts_with('S'))
        .map(str::to_owned)
        .ok_or_else(|| {
            Failure::Input(format!(
                "--nkey {}: no nkey seed in it (a line starting with `S`, such as `SU...`)",
                path.display()
            ))
        })
}

async fn connect(c: &Connection) -> Result<async_nats::Client, Failure> {
    let failed = |reason: String| Failure::Connect {
        server: c.server.clone(),
        reason,
    };
    let mut options = match (&c.creds, &c.nkey) {
        (Some(_), Some(_)) => {
            return Err(Failure::Input(
                "--creds and --nkey do not go together: a credentials file holds its own nkey"
                    .to_owned(),
            ));
        }
        (Some(path), None) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| Failure::Input(format!("--creds {}: {e}", path.display())))?,
        (None, Some(path)) => async_nats::ConnectOptions::with_nkey(nkey_seed(path)?),
        (None, None) => async_nats::ConnectOptions::new(),
    };
    if let Some(prefix) = &c.inbox_prefix {
        options = options.custom_inbox_prefix(prefix.clone());
    }
    let watch = REFUSALS.get_or_init(PermissionWatch::new);
    options = watch.install(options);
    if let (Some(user), Some(password)) = (&c.user, &c.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &c.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &c.tlsca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&c.tlscert, &c.tlskey) {
        (Some(cert), Some(key)) => {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(Failure::Input(
                "--tlscert and --tlskey go together".to_owned(),
            ));
        }
    }
    let wait = Duration::from_secs(c.timeout.max(1));
    let options = options.connection_timeout(wait).request_timeout(Some(wait));
    let servers: Vec<&str> = c.server.split(',').map(str::trim).collect();
    match tokio::time::timeout(wait, options.connect(servers.as_slice())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(failed(aether_core::error_chain(&e))),
        Err(_) => Err(failed(format!("no answer within {} s", wait.as_secs()))),
    }
}
