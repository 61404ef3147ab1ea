//! Tenants on one nats-server, for the tests of docs/security.md's permission blocks: the blocks
//! read from the document as written, a server whose users have them, connections as those
//! users, the permission violations the server logs, and a marker that shows a subscription
//! received nothing.
//!
//! docs/security.md writes each block for store `events` and tenant (namespace, cluster, inbox
//! suffix) [`DOCUMENTED_TENANT`], after a `<!-- tested: ... -->` marker; [`Role::permissions`]
//! reads it and puts another tenant in its place.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aether_testkit::tenancy::TenancyError> {
//! use aether_testkit::tenancy::{self, Authorization, Role};
//! let server = Authorization::with_operator()
//!     .restricted_user("tenant-a", "a", &Role::Writer.permissions("tenant-a")?)
//!     .restricted_user("tenant-b", "b", &Role::Writer.permissions("tenant-b")?)
//!     .start("tenants")
//!     .await?;
//! let (a, watch) = tenancy::connect_watched(&server, "tenant-a", "a", Some("_INBOX_tenant-a")).await?;
//! assert!(tenancy::violations(&server).is_empty());
//! # drop((a, watch)); Ok(()) }
//! ```

use std::fmt::Write as _;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aether_nats::permissions::PermissionWatch;
use futures::{FutureExt, Stream, StreamExt};

use crate::nats::{HarnessError, NatsServer};

/// The tenant docs/security.md writes its blocks for (store `events`, namespace, cluster and
/// inbox suffix `tenant-a`).
pub const DOCUMENTED_TENANT: &str = "tenant-a";

/// The user (and password) with no restrictions that [`Authorization::with_operator`] adds and
/// [`connect_operator`] connects as: it creates the stores and buckets the tenants bind to.
pub const OPERATOR: &str = "operator";

/// How often [`wait_for_violation`] reads the server's log.
const POLL: Duration = Duration::from_millis(10);

/// Errors of the tenancy helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenancyError {
    /// docs/security.md could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The document.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// docs/security.md has no fenced block after the marker.
    #[error("{path} has no fenced block after `<!-- tested: {marker} -->`")]
    NoBlock {
        /// The document.
        path: PathBuf,
        /// The marker's name.
        marker: String,
    },
    /// The server's configuration file could not be written.
    #[error("writing nats-server {name}'s configuration: {source}")]
    Write {
        /// The server's name.
        name: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Starting the server failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// Connecting a client failed.
    #[error("connecting as {who} to nats-server {name} at {url}: {source}")]
    Connect {
        /// Whom the client connected as.
        who: String,
        /// The server's name.
        name: String,
        /// Its URL.
        url: String,
        /// The failure.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A subscription, publish, request or flush of a helper failed.
    #[error("{what}: {source}")]
    Nats {
        /// What the helper was doing.
        what: String,
        /// The failure.
        #[source]
        source: async_nats::Error,
    },
    /// What a helper waited for did not come in time.
    #[error("no {what} within {timeout:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the helper waited.
        timeout: Duration,
    },
}

/// A role with a permission block in docs/security.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The store's writer (`<!-- tested: writer permissions -->`).
    Writer,
    /// The store's read-only user (`<!-- tested: reader permissions -->`).
    Reader,
    /// The bus (`<!-- tested: bus permissions -->`).
    Bus,
    /// A cluster node (`<!-- tested: cluster node permissions -->`).
    ClusterNode,
    /// A caller of a cluster's actors (`<!-- tested: caller permissions -->`).
    Caller,
}

impl Role {
    /// The name in the block's `<!-- tested: ... -->` marker.
    pub fn marker(self) -> &'static str {
        match self {
            Role::Writer => "writer permissions",
            Role::Reader => "reader permissions",
            Role::Bus => "bus permissions",
            Role::ClusterNode => "cluster node permissions",
            Role::Caller => "caller permissions",
        }
    }

    /// The role's block exactly as docs/security.md shows it, with `tenant` in place of
    /// [`DOCUMENTED_TENANT`] (see [`documented_block`]).
    pub fn permissions(self, tenant: &str) -> Result<String, TenancyError> {
        documented_block(self.marker(), tenant)
    }
}

/// A user whose permissions are a [`Role`]'s documented block for a tenant, for
/// [`start_tenants`] and [`Authorization::tenant_users`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantUser {
    /// The user's name.
    pub name: &'static str,
    /// Its password.
    pub password: &'static str,
    /// Whose block it has.
    pub role: Role,
    /// The tenant the block is written for.
    pub tenant: &'static str,
}

impl TenantUser {
    /// User `name` with `password` and `role`'s block for `tenant`.
    pub const fn new(
        name: &'static str,
        password: &'static str,
        role: Role,
        tenant: &'static str,
    ) -> Self {
        Self {
            name,
            password,
            role,
            tenant,
        }
    }
}

/// Starts a JetStream server named `name` whose users are [`OPERATOR`] and `users`, each with its
/// role's block of docs/security.md for its tenant.
pub async fn start_tenants(
    name: &str,
    users: &[TenantUser],
) -> Result<ConfiguredServer, TenancyError> {
    Authorization::with_operator()
        .tenant_users(users)?
        .start(name)
        .await
}

/// Where docs/security.md is.
pub fn security_doc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md")
}

/// The fenced block after `<!-- tested: {marker} -->` in docs/security.md (without the fence's
/// `text` language tag), with every `tenant-a` replaced by `tenant`.
pub fn documented_block(marker: &str, tenant: &str) -> Result<String, TenancyError> {
    let path = security_doc();
    let doc = std::fs::read_to_string(&path).map_err(|source| TenancyError::Read {
        path: path.clone(),
        source,
    })?;
    let body = doc
        .find(&format!("<!-- tested: {marker} -->"))
        .and_then(|start| doc[start..].split("```").nth(1))
        .ok_or_else(|| TenancyError::NoBlock {
            path,
            marker: marker.to_owned(),
        })?;
    let body = body.strip_prefix("text").unwrap_or(body);
    Ok(body.replace(DOCUMENTED_TENANT, tenant))
}

/// The users of a nats-server configuration's `authorization { users = [...] }` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    users: Vec<String>,
}

impl Authorization {
    /// No users yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts with [`OPERATOR`], a user with no restrictions (password `operator`).
    pub fn with_operator() -> Self {
        Self::new().user(OPERATOR, OPERATOR)
    }

    /// Adds a user with no restrictions.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users
            .push(format!("{{ user: {name}, password: {password} }}"));
        self
    }

    /// Adds a user whose permissions are `permissions`, a block in the server's configuration
    /// syntax (`{ publish: ..., subscribe: ... }`), e.g. from [`Role::permissions`].
    pub fn restricted_user(mut self, name: &str, password: &str, permissions: &str) -> Self {
        self.users.push(format!(
            "{{ user: {name}, password: {password}, permissions: {permissions} }}"
        ));
        self
    }

    /// Adds `users`, each with its role's block of docs/security.md for its tenant.
    pub fn tenant_users(mut self, users: &[TenantUser]) -> Result<Self, TenancyError> {
        for user in users {
            let block = user.role.permissions(user.tenant)?;
            self = self.restricted_user(user.name, user.password, &block);
        }
        Ok(self)
    }

    /// Adds an nkey user (its public key) whose permissions are `permissions`.
    pub fn nkey_user(mut self, public_key: &str, permissions: &str) -> Self {
        self.users.push(format!(
            "{{ nkey: \"{public_key}\", permissions: {permissions} }}"
        ));
        self
    }

    /// The configuration file's text: the `authorization` block.
    pub fn config(&self) -> String {
        let mut text = String::from("authorization {\n  users = [\n");
        for user in &self.users {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "    {user}");
        }
        text.push_str("  ]\n}\n");
        text
    }

    /// Starts a JetStream server named `name` with this configuration.
    pub async fn start(&self, name: &str) -> Result<ConfiguredServer, TenancyError> {
        ConfiguredServer::start(name, &self.config()).await
    }
}

/// A [`NatsServer`] started with a configuration file (`-c`), and the file, kept in a temporary
/// directory for as long as the server lives (a [`NatsServer::restart`] reads it again). It
/// dereferences to the server.
#[derive(Debug)]
pub struct ConfiguredServer {
    server: NatsServer,
    dir: tempfile::TempDir,
}

impl ConfiguredServer {
    /// The name of the configuration file in its directory.
    const FILE: &'static str = "nats-server.conf";

    /// Writes `config` (the text of a nats-server configuration file, e.g.
    /// [`Authorization::config`], without a `server_name`) to a temporary file and starts a
    /// JetStream server named `name` with it.
    pub async fn start(name: &str, config: &str) -> Result<Self, TenancyError> {
        let write = |source| TenancyError::Write {
            name: name.to_owned(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix("aether-nats-conf-")
            .tempdir()
            .map_err(write)?;
        let path = dir.path().join(Self::FILE);
        std::fs::write(&path, Self::file_text(name, config)).map_err(write)?;
        let server =
            NatsServer::start_with(name, vec!["-c".into(), path.display().to_string()]).await?;
        Ok(Self { server, dir })
    }

    /// The file's text: `config` after the server's name (a reload must not change the name
    /// the server was started with, and the name from `-n` is not kept over a reload).
    fn file_text(name: &str, config: &str) -> String {
        format!("server_name: {name:?}\n{config}")
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(Self::FILE)
    }

    /// The server.
    pub fn server(&self) -> &NatsServer {
        &self.server
    }

    /// Writes `config` (as for [`ConfiguredServer::start`]) over the configuration file and has
    /// the server reload it (SIGHUP): new permissions apply to the connections already open too.
    /// The server logs `Reloaded server configuration` once it has.
    pub async fn reload(&self, config: &str) -> Result<(), TenancyError> {
        let name = self.server.name().to_owned();
        tokio::fs::write(self.config_path(), Self::file_text(&name, config))
            .await
            .map_err(|source| TenancyError::Write {
                name: name.clone(),
                source,
            })?;
        let pid = self
            .server
            .process_id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| HarnessError::NotRunning { name: name.clone() })?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(|e| {
            HarnessError::Io {
                name,
                context: "sending SIGHUP".into(),
                source: e.into(),
            }
        })?;
        Ok(())
    }
}

impl Deref for ConfiguredServer {
    type Target = NatsServer;

    fn deref(&self) -> &NatsServer {
        &self.server
    }
}

impl DerefMut for ConfiguredServer {
    fn deref_mut(&mut self) -> &mut NatsServer {
        &mut self.server
    }
}

/// Connects to `server` with `options`, with the custom inbox prefix `inbox` if there is one (a
/// tenant in a shared account needs its own: docs/security.md).
pub async fn connect_with(
    server: &NatsServer,
    options: async_nats::ConnectOptions,
    inbox: Option<&str>,
) -> Result<async_nats::Client, TenancyError> {
    connect_as(server, "the given options", options, inbox).await
}

/// Connects to `server` as `user` with `password` (and the inbox prefix `inbox`, if any).
pub async fn connect(
    server: &NatsServer,
    user: &str,
    password: &str,
    inbox: Option<&str>,
) -> Result<async_nats::Client, TenancyError> {
    let options = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into());
    connect_as(server, user, options, inbox).await
}

/// Connects to `server` as [`OPERATOR`], with the default inbox prefix.
pub async fn connect_operator(server: &NatsServer) -> Result<async_nats::Client, TenancyError> {
    connect(server, OPERATOR, OPERATOR, None).await
}

/// Connects to `server` as `user` with `password` (and the inbox prefix `inbox`, if any), with
/// a new [`PermissionWatch`] installed on the connection; hand the watch to the store, bus or
/// projection that uses the client.
pub async fn connect_watched(
    server: &NatsServer,
    user: &str,
    password: &str,
    inbox: Option<&str>,
) -> Result<(async_nats::Client, PermissionWatch), TenancyError> {
    let watch = PermissionWatch::new();
    let options = watch.install(async_nats::ConnectOptions::with_user_and_password(
        user.into(),
        password.into(),
    ));
    let client = connect_as(server, user, options, inbox).await?;
    Ok((client, watch))
}

async fn connect_as(
    server: &NatsServer,
    who: &str,
    options: async_nats::ConnectOptions,
    inbox: Option<&str>,
) -> Result<async_nats::Client, TenancyError> {
    let options = match inbox {
        Some(prefix) => options.custom_inbox_prefix(prefix),
        None => options,
    };
    options
        .connect(server.url())
        .await
        .map_err(|source| TenancyError::Connect {
            who: who.to_owned(),
            name: server.name().to_owned(),
            url: server.url(),
            source,
        })
}

/// The permission violations `server` logged so far (its log lines that say `Violation`: one
/// for each publish or subscription its permission check refused).
pub fn violations(server: &NatsServer) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// The entries of `expected` (e.g. `Publish Violation - Subject "aether.tenant-b"`) that no line
/// of `violations` (see [`violations`]) logs for `user`, i.e. contains as
/// `user:{user}" - {expected}`.
pub fn not_logged<'a>(violations: &[String], user: &str, expected: &[&'a str]) -> Vec<&'a str> {
    expected
        .iter()
        .copied()
        .filter(|line| {
            let logged = format!("user:{user}\" - {line}");
            !violations.iter().any(|l| l.contains(&logged))
        })
        .collect()
}

/// The lines of `violations` a test did not expect: those that are not `users`' (do not contain
/// `user:{user}"` for one of them) or that `expected` does not accept.
pub fn unexpected_violations(
    violations: &[String],
    users: &[&str],
    expected: impl Fn(&str) -> bool,
) -> Vec<String> {
    violations
        .iter()
        .filter(|l| {
            let theirs = users.iter().any(|u| l.contains(&format!("user:{u}\"")));
            !(theirs && expected(l))
        })
        .cloned()
        .collect()
}

/// Waits until `server` logs a permission violation whose line contains `needle` (e.g.
/// `Publish Violation - Subject "aether.tenant-b"`), and returns the line.
pub async fn wait_for_violation(
    server: &NatsServer,
    needle: &str,
    timeout: Duration,
) -> Result<String, TenancyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(line) = violations(server).into_iter().find(|l| l.contains(needle)) {
            return Ok(line);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TenancyError::Timeout {
                what: format!(
                    "violation with {needle} in nats-server {}'s log",
                    server.name()
                ),
                timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a request to `subject` is answered (with a reply, not an error) within `timeout`.
/// A request the server refuses is dropped unanswered: the client sees a timeout.
pub async fn answered(
    client: &async_nats::Client,
    subject: &str,
    payload: bytes::Bytes,
    timeout: Duration,
) -> bool {
    let request = client.request(subject.to_owned(), payload);
    matches!(tokio::time::timeout(timeout, request).await, Ok(Ok(_)))
}

/// Whether nothing has arrived on `subscription` (nothing is ready now). Call it after a
/// [`Marker`] arrived on the same connection: what the server sent before the marker has arrived
/// by then.
pub fn nothing_received<S: Stream + Unpin>(subscription: &mut S) -> bool {
    !matches!(subscription.next().now_or_never(), Some(Some(_)))
}

/// A message a listener's connection receives after everything the server sent it before: once
/// it is here, a subscription on the same connection that has nothing has received nothing
/// ([`nothing_received`]).
///
/// ```no_run
/// # async fn demo(spy: async_nats::Client, operator: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use aether_testkit::tenancy::{Marker, nothing_received};
/// use std::time::Duration;
/// let mut peek = spy.subscribe("ae.events_tenant-b.>").await?;
/// let marker = Marker::subscribe(&spy, "_INBOX_tenant-a", "$JS.API.STREAM.INFO.events_tenant-a").await?;
/// // ... tenant B appends ...
/// marker.arrive(&operator, Duration::from_secs(10)).await?;
/// assert!(nothing_received(&mut peek));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Marker {
    subject: String,
    arrivals: async_nats::Subscriber,
}

impl Marker {
    /// Subscribes `listener` to a fresh subject under `inbox_prefix` (one it may subscribe to),
    /// then asks `probe` (a request the listener may make and the server answers): once it is
    /// answered, the server holds this subscription and every one the listener made before (or
    /// refused them).
    pub async fn subscribe(
        listener: &async_nats::Client,
        inbox_prefix: &str,
        probe: &str,
    ) -> Result<Self, TenancyError> {
        let subject = format!("{inbox_prefix}.marker.{}", uuid::Uuid::new_v4().simple());
        let arrivals = listener
            .subscribe(subject.clone())
            .await
            .map_err(|e| nats(format!("subscribing to {subject}"), e))?;
        listener
            .request(probe.to_owned(), bytes::Bytes::new())
            .await
            .map_err(|e| nats(format!("requesting {probe}"), e))?;
        Ok(Self { subject, arrivals })
    }

    /// The marker's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Publishes the marker from `sender` (a client that may publish to the listener's inbox) and
    /// waits up to `timeout` for the listener to receive it.
    pub async fn arrive(
        mut self,
        sender: &async_nats::Client,
        timeout: Duration,
    ) -> Result<(), TenancyError> {
        sender
            .publish(self.subject.clone(), "marker".into())
            .await
            .map_err(|e| nats(format!("publishing {}", self.subject), e))?;
        sender
            .flush()
            .await
            .map_err(|e| nats("flushing the marker".to_owned(), e))?;
        match tokio::time::timeout(timeout, self.arrivals.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(TenancyError::Nats {
                what: format!("waiting for the marker on {}", self.subject),
                source: "the marker subscription closed".into(),
            }),
            Err(_) => Err(TenancyError::Timeout {
                what: format!("marker on {}", self.subject),
                timeout,
            }),
        }
    }
}

fn nats(what: String, source: impl Into<async_nats::Error>) -> TenancyError {
    TenancyError::Nats {
        what,
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_lists_every_user() {
        let config = Authorization::with_operator()
            .restricted_user("a", "pa", "{ publish: [\"x\"] }")
            .nkey_user("UKEY", "{}")
            .config();
        assert_eq!(
            config,
            "authorization {\n  users = [\n    { user: operator, password: operator }\n    \
             { user: a, password: pa, permissions: { publish: [\"x\"] } }\n    \
             { nkey: \"UKEY\", permissions: {} }\n  ]\n}\n"
        );
    }

    #[test]
    fn every_role_has_its_block_in_the_document() -> Result<(), TenancyError> {
        for role in [
            Role::Writer,
            Role::Reader,
            Role::Bus,
            Role::ClusterNode,
            Role::Caller,
        ] {
            let block = role.permissions("tenant-z")?;
            assert!(block.trim_start().starts_with('{'), "{role:?}: {block}");
            assert!(block.contains("tenant-z"), "{role:?}: {block}");
            assert!(!block.contains(DOCUMENTED_TENANT), "{role:?}: {block}");
        }
        assert!(matches!(
            documented_block("no such permissions", "tenant-z"),
            Err(TenancyError::NoBlock { .. })
        ));
        Ok(())
    }
}
