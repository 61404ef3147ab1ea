//! Permission refusals: what nats-server says when a user's subject permissions forbid a publish
//! or a subscription, heard on the connection so that a call in flight fails at once with the
//! refused subject instead of timing out.
//!
//! The server answers a forbidden `PUB` or `SUB` with `-ERR 'Permissions Violation for Publish to
//! "<subject>"'` (or `... for Subscription to "<subject>"`, optionally `using queue "<queue>"`) and
//! keeps the connection. async-nats hands that text only to the connection's event callback, as
//! `Event::ServerError(ServerError::Other(text))`: the refused request itself is never answered
//! and times out, and a refused publish or subscription returns `Ok`.
//!
//! A [`PermissionWatch`] (one per connection) hears those events: [`PermissionWatch::install`]
//! sets it as the connection's event callback, [`PermissionWatch::observe`] feeds it from a
//! callback of your own. Layers that talk to the server race their calls against it
//! ([`PermissionWatch::guard`]): a [`Watcher`] is subscribed before anything is sent, so a refusal
//! that comes back while the call waits cannot be missed. It also remembers (bounded) what was
//! refused on the current connection: the client subscribes to its reply inbox once per
//! connection, so a refused inbox subscription is reported once and every later request would
//! silently time out ([`PermissionWatch::replies_refused`]); and a core NATS publish has no answer,
//! so a refused subject is known only after the first publish to it
//! ([`PermissionWatch::recently_refused`]).
//!
//! ```
//! use aether_nats::permissions::{Operation, PermissionWatch, Refusal};
//!
//! let watch = PermissionWatch::new();
//! let options = watch.install(async_nats::ConnectOptions::new());
//! # drop(options);
//! // What the client reports when the server refuses a publish:
//! let event = async_nats::Event::ServerError(async_nats::ServerError::Other(
//!     r#"Permissions Violation for Publish to "ae.events.order-1""#.to_owned(),
//! ));
//! let refusal = watch.observe(&event).expect("a permission refusal");
//! assert_eq!(refusal, Refusal::new(Operation::Publish, "ae.events.order-1"));
//! assert!(watch.recently_refused(Operation::Publish, "ae.events.order-1").is_some());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use aether_core::StoreError;
use async_nats::{ConnectOptions, Event, ServerError};
use tokio::sync::broadcast;

/// How long [`PermissionWatch::recently_refused`] remembers a refusal by default.
pub const DEFAULT_MEMORY: Duration = Duration::from_secs(60);

/// Refusals a watch remembers at most (the oldest are forgotten first).
pub const REMEMBERED: usize = 256;

/// Refusals a [`Watcher`] may fall behind by before it looks in the memory instead.
const CHANNEL: usize = 64;

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Publishing to the subject (a request's subject included).
    Publish,
    /// Subscribing to the subject (a reply inbox included).
    Subscribe,
}

impl Operation {
    /// `"publish"` or `"subscribe"`, as errors name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Subscribe => "subscribe",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One permission refusal of the server: the operation and the subject it refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Refusal {
    /// What was refused.
    pub operation: Operation,
    /// The refused subject, exactly as the client sent it.
    pub subject: String,
    /// The queue group of a refused queue subscription.
    pub queue: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {:?}", self.operation, self.subject)?;
        if let Some(queue) = &self.queue {
            write!(f, " (queue {queue:?})")?;
        }
        Ok(())
    }
}

impl Refusal {
    /// A refusal of `operation` on `subject`.
    pub fn new(operation: Operation, subject: impl Into<String>) -> Self {
        Self {
            operation,
            subject: subject.into(),
            queue: None,
        }
    }

    /// Reads the server's text of a permission refusal, as async-nats reports it (the quotes of
    /// the protocol line removed; a leading `nats: `, from the error's display, and surrounding
    /// quotes are accepted too):
    ///
    /// - `Permissions Violation for Publish to "<subject>"`
    /// - `Permissions Violation for Subscription to "<subject>"`, optionally followed by
    ///   ` using queue "<queue>"`, `, too many tokens` or ` (sid ...)` (a reload revoking an
    ///   existing subscription).
    ///
    /// `None` for any other text (`Publish with Reply of ...`, a reserved reply subject, is not
    /// a subject permission). Never panics, whatever the text.
    pub fn parse(text: &str) -> Option<Refusal> {
        let text = text.trim();
        let text = text.strip_prefix("nats: ").unwrap_or(text);
        let text = text.trim_matches('\'');
        let rest = text.strip_prefix("Permissions Violation for ")?;
        let (operation, rest) = if let Some(rest) = rest.strip_prefix("Publish to ") {
            (Operation::Publish, rest)
        } else if let Some(rest) = rest.strip_prefix("Subscription to ") {
            (Operation::Subscribe, rest)
        } else {
            return None;
        };
        let (subject, rest) = go_unquote(rest)?;
        if subject.is_empty() {
            return None;
        }
        let queue = rest
            .strip_prefix(" using queue ")
            .and_then(go_unquote)
            .map(|(queue, _)| queue);
        Some(Refusal {
            operation,
            subject,
            queue,
        })
    }

    /// The refusal a client event reports, if it is one.
    pub fn from_event(event: &Event) -> Option<Refusal> {
        match event {
            Event::ServerError(ServerError::Other(text)) => Refusal::parse(text),
            _ => None,
        }
    }

    /// Whether this refuses `operation` on exactly `subject`.
    pub fn is(&self, operation: Operation, subject: &str) -> bool {
        self.operation == operation && self.subject == subject
    }

    /// Whether this refuses the subscription to a reply inbox under `inbox_prefix` (the client's
    /// inbox prefix, `_INBOX` unless set with `ConnectOptions::custom_inbox_prefix`): the
    /// replies to every request on the connection are then lost.
    pub fn is_reply_inbox(&self, inbox_prefix: &str) -> bool {
        self.operation == Operation::Subscribe
            && self
                .subject
                .strip_prefix(inbox_prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }

    /// This refusal as a store error ([`StoreError::PermissionDenied`], never transient);
    /// `context` says what the store was doing.
    pub fn store_error(&self, context: impl Into<String>) -> StoreError {
        StoreError::PermissionDenied {
            operation: self.operation.as_str(),
            subject: self.subject.clone(),
            context: context.into(),
        }
    }
}

/// Reads a Go `%q` string at the start of `text`: the string (invalid UTF-8 from `\x` escapes
/// replaced) and the text after the closing quote. `None` if `text` does not start with one.
fn go_unquote(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut bytes = Vec::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let rest = body.get(i + 1..)?;
                return Some((String::from_utf8_lossy(&bytes).into_owned(), rest));
            }
            '\\' => {
                let (_, escaped) = chars.next()?;
                let simple = match escaped {
                    'a' => Some(0x07),
                    'b' => Some(0x08),
                    'f' => Some(0x0c),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(0x0b),
                    '\\' => Some(b'\\'),
                    '"' => Some(b'"'),
                    '\'' => Some(b'\''),
                    _ => None,
                };
                if let Some(b) = simple {
                    bytes.push(b);
                    continue;
                }
                let digits = match escaped {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    '0'..='7' => {
                        // Three octal digits, this one the first.
                        let mut value = escaped.to_digit(8)?;
                        for _ in 0..2 {
                            let (_, d) = chars.next()?;
                            value = value * 8 + d.to_digit(8)?;
                        }
                        bytes.push(u8::try_from(value).ok()?);
                        continue;
                    }
                    _ => return None,
                };
                let mut value: u32 = 0;
                for _ in 0..digits {
                    let (_, d) = chars.next()?;
                    value = value.checked_mul(16)?.checked_add(d.to_digit(16)?)?;
                }
                if escaped == 'x' {
                    bytes.push(u8::try_from(value).ok()?);
                } else {
                    let c = char::from_u32(value)?;
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
            c => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    None
}

/// A refusal as the watch saw it.
#[derive(Debug)]
struct Seen {
    refusal: Refusal,
    at: Instant,
    /// The connection (counted by `Event::Connected`) it was refused on.
    connection: u64,
}

#[derive(Debug)]
struct Shared {
    sender: broadcast::Sender<Arc<Seen>>,
    memory: Mutex<VecDeque<Arc<Seen>>>,
    /// How long [`PermissionWatch::recently_refused`] looks back.
    window: Duration,
    /// When the watch was made: the origin of `last_publish_refusal`.
    origin: Instant,
    /// Nanoseconds after `origin` of the last publish refusal (0: none), so that a publish can
    /// skip the memory's lock when nothing was refused lately.
    last_publish_refusal: AtomicU64,
    /// Connections seen (`Event::Connected`).
    connection: AtomicU64,
    refusals: AtomicU64,
}

impl Shared {
    fn nanos_since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn find(&self, matches: impl Fn(&Seen) -> bool) -> Option<Refusal> {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|seen| matches(seen))
            .map(|seen| seen.refusal.clone())
    }
}

/// Hears the server's permission refusals on one connection (see the [module](self) docs).
/// Cheap to clone: clones share what they heard. Install it on the connection's options
/// ([`install`](Self::install), or [`observe`](Self::observe) from your own event callback) and
/// give it to the store, bus or cluster on that connection.
///
/// Two watches are equal when they are clones of one another.
#[derive(Debug, Clone)]
pub struct PermissionWatch {
    shared: Arc<Shared>,
}

impl Default for PermissionWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for PermissionWatch {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for PermissionWatch {}

impl PermissionWatch {
    /// A watch that remembers refusals for [`DEFAULT_MEMORY`].
    pub fn new() -> Self {
        Self::with_memory(DEFAULT_MEMORY)
    }

    /// A watch whose [`recently_refused`](Self::recently_refused) looks back `window` (at most
    /// [`REMEMBERED`] refusals are kept, whatever their age).
    pub fn with_memory(window: Duration) -> Self {
        let (sender, _) = broadcast::channel(CHANNEL);
        Self {
            shared: Arc::new(Shared {
                sender,
                memory: Mutex::new(VecDeque::new()),
                window,
                origin: Instant::now(),
                last_publish_refusal: AtomicU64::new(0),
                connection: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
            }),
        }
    }

    /// `options` with this watch as the connection's event callback. It replaces a callback set
    /// before; to keep your own, call [`observe`](Self::observe) from it instead.
    pub fn install(&self, options: ConnectOptions) -> ConnectOptions {
        let watch = self.clone();
        options.event_callback(move |event| {
            watch.observe(&event);
            std::future::ready(())
        })
    }

    /// Feeds the watch a client event: a permission refusal is remembered, logged and handed to
    /// every waiting [`Watcher`] (and returned); a new connection (`Event::Connected`) forgets
    /// the refusals of the last one, as the client subscribes everything again. Other events
    /// are ignored.
    pub fn observe(&self, event: &Event) -> Option<Refusal> {
        match event {
            Event::Connected => {
                self.shared.connection.fetch_add(1, Ordering::AcqRel);
                self.shared
                    .memory
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                self.shared.last_publish_refusal.store(0, Ordering::Release);
                None
            }
            _ => {
                let refusal = Refusal::from_event(event)?;
                self.report(refusal.clone());
                Some(refusal)
            }
        }
    }

    /// Records `refusal` as if the server had just reported it on this connection.
    pub fn report(&self, refusal: Refusal) {
        tracing::warn!(
            operation = refusal.operation.as_str(),
            subject = %refusal.subject,
            "the NATS server refused {refusal} (the user's permissions)"
        );
        let at = Instant::now();
        let shared = &self.shared;
        shared.refusals.fetch_add(1, Ordering::Relaxed);
        if refusal.operation == Operation::Publish {
            shared
                .last_publish_refusal
                .store(shared.nanos_since_origin(at), Ordering::Release);
        }
        let seen = Arc::new(Seen {
            refusal,
            at,
            connection: shared.connection.load(Ordering::Acquire),
        });
        {
            let mut memory = shared.memory.lock().unwrap_or_else(PoisonError::into_inner);
            if memory.len() >= REMEMBERED {
                memory.pop_front();
            }
            memory.push_back(seen.clone());
        }
        // Nobody waiting is fine: the memory has it.
        let _ = shared.sender.send(seen);
    }

    /// Refusals heard since the watch was made.
    pub fn refusals(&self) -> u64 {
        self.shared.refusals.load(Ordering::Relaxed)
    }

    /// What was refused on the current connection, oldest first (at most [`REMEMBERED`]).
    pub fn remembered(&self) -> Vec<Refusal> {
        self.shared
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|seen| seen.refusal.clone())
            .collect()
    }

    /// A refusal of `operation` on exactly `subject` heard within the watch's memory window
    /// (the last one). Takes no lock unless a publish was refused within the window (for a
    /// subscription it always looks).
    pub fn recently_refused(&self, operation: Operation, subject: &str) -> Option<Refusal> {
        let shared = &self.shared;
        let now = Instant::now();
        if operation == Operation::Publish {
            let last = shared.last_publish_refusal.load(Ordering::Acquire);
            let now_nanos = shared.nanos_since_origin(now);
            let window = u64::try_from(shared.window.as_nanos()).unwrap_or(u64::MAX);
            if last == 0 || now_nanos.saturating_sub(last) > window {
                return None;
            }
        }
        shared.find(|seen| {
            seen.refusal.is(operation, subject)
                && now.saturating_duration_since(seen.at) <= shared.window
        })
    }

    /// The refusal of the reply inbox subscription under `inbox_prefix` on the current
    /// connection, if there was one: every request's reply is then lost until the client
    /// reconnects (it subscribes its inbox once per connection).
    pub fn replies_refused(&self, inbox_prefix: &str) -> Option<Refusal> {
        let connection = self.shared.connection.load(Ordering::Acquire);
        self.shared
            .find(|seen| seen.connection == connection && seen.refusal.is_reply_inbox(inbox_prefix))
    }

    /// A [`Watcher`] of the refusals heard from now on. Make it before sending what it is to
    /// catch the refusal of.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            receiver: self.shared.sender.subscribe(),
            shared: self.shared.clone(),
            since: Instant::now(),
        }
    }

    /// Runs `operation`, unless the server refuses something `matches` accepts first: then
    /// `Err` with that refusal (and `operation` is dropped). The watcher is made before
    /// `operation` is first polled, so `operation` must send nothing before it is polled (as an
    /// `async` block or function does).
    pub async fn guard<T>(
        &self,
        matches: impl Fn(&Refusal) -> bool,
        operation: impl Future<Output = T>,
    ) -> Result<T, Refusal> {
        let mut watcher = self.watcher();
        let mut refused = pin!(watcher.refusal(matches));
        let mut operation = pin!(operation);
        poll_fn(|cx| {
            if let Poll::Ready(out) = operation.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if let Poll::Ready(refusal) = refused.as_mut().poll(cx) {
                return Poll::Ready(Err(refusal));
            }
            Poll::Pending
        })
        .await
    }
}

/// The refusals a [`PermissionWatch`] hears from the moment this was made (see
/// [`PermissionWatch::watcher`]).
#[derive(Debug)]
pub struct Watcher {
    receiver: broadcast::Receiver<Arc<Seen>>,
    shared: Arc<Shared>,
    since: Instant,
}

impl Watcher {
    /// The next refusal `matches` accepts; pending for as long as there is none (race it with
    /// the call it concerns). If refusals came faster than it was read, it looks in the watch's
    /// memory for one heard since the watcher was made.
    pub async fn refusal(&mut self, matches: impl Fn(&Refusal) -> bool) -> Refusal {
        loop {
            match self.receiver.recv().await {
                Ok(seen) if matches(&seen.refusal) => return seen.refusal.clone(),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let since = self.since;
                    if let Some(refusal) = self
                        .shared
                        .find(|seen| seen.at >= since && matches(&seen.refusal))
                    {
                        return refusal;
                    }
                }
                // The watch holds the sender as long as this holds the watch's state.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

/// The inbox prefix of `client` (`_INBOX`, or its `custom_inbox_prefix`): replies to its
/// requests come to subjects under it.
pub fn inbox_prefix(client: &async_nats::Client) -> String {
    let inbox = client.new_inbox();
    match inbox.rsplit_once('.') {
        Some((prefix, _)) => prefix.to_owned(),
        None => inbox,
    }
}

#[cfg(test)]
mod tests;
