//! What a command to an actor can end in, besides success.

use std::sync::Arc;

use aether_core::{CodecError, ReminderError, StoreError, UpcastError};

/// Why an `ask` (or a `tell`, where it is logged) did not succeed.
///
/// `Rejected` is the actor's own domain error; the others come from the runtime. The variants
/// are kept small (shared actor id, boxed sources): every reply carries one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError<E: std::error::Error + 'static> {
    /// The actor refused the command (its `handle` returned this error). Nothing was stored.
    #[error("actor {actor_id} rejected the command: {source}")]
    Rejected {
        /// The actor.
        actor_id: Arc<str>,
        /// The domain error.
        #[source]
        source: E,
    },
    /// Other writers kept winning: the command was tried `attempts` times, each on reloaded
    /// state, and every append met a newer version.
    #[error("actor {actor_id}: version conflict persisted after {attempts} attempts")]
    Conflict {
        /// The actor.
        actor_id: Arc<str>,
        /// Attempts made.
        attempts: u32,
    },
    /// The store failed (unavailable, timeout, ...). The outcome of the append is reported by
    /// the store; a retry with the same command is safe for the runtime's own state.
    #[error("actor {actor_id}: store failed")]
    Store {
        /// The actor.
        actor_id: Arc<str>,
        /// The store's error.
        #[source]
        source: Box<StoreError>,
    },
    /// An event could not be encoded or a stored event could not be decoded into the actor's
    /// event type.
    #[error("actor {actor_id}: {context}")]
    Codec {
        /// The actor.
        actor_id: Arc<str>,
        /// What was being encoded or decoded.
        context: String,
        /// The codec error.
        #[source]
        source: Box<CodecError>,
    },
    /// A stored event could not be brought to its current shape by the runtime's upcasters
    /// (written by newer code, a missing step, a failing step): the actor is not activated,
    /// and the error names the event type and the versions. Not transient: deploy the
    /// upcaster (or the code that knows the version), then send again.
    #[error("actor {actor_id}: {context}")]
    Upcast {
        /// The actor.
        actor_id: Arc<str>,
        /// Which stored event.
        context: String,
        /// What the upcasters said (shared by every caller waiting for the activation).
        #[source]
        source: Arc<UpcastError>,
    },
    /// The actor could not be activated: its snapshot or history did not decode (a store that
    /// failed while loading is [`AskError::Store`], which keeps whether it was transient).
    #[error("actor {actor_id} could not be activated: {reason}")]
    Activation {
        /// The actor.
        actor_id: Arc<str>,
        /// Why.
        reason: String,
    },
    /// The handler (or `apply`) panicked. The actor was reloaded from the store; other actors
    /// were not affected.
    #[error("actor {actor_id} panicked while handling the command: {message}")]
    Panicked {
        /// The actor.
        actor_id: Arc<str>,
        /// The panic message, when it was a string.
        message: String,
    },
    /// The command or an event it produced is not declared for this aggregate in the loaded
    /// EventStorming model. Nothing was stored.
    #[error("actor {actor_id}: {reason}")]
    NotInModel {
        /// The actor.
        actor_id: Arc<str>,
        /// What the model does not declare.
        reason: String,
    },
    /// The runtime is shutting down and takes no new commands.
    #[error("the runtime is shut down; actor {actor_id} takes no new commands")]
    ShutDown {
        /// The actor.
        actor_id: Arc<str>,
    },
    /// The handler's reminders could not be set or cancelled. If setting failed, nothing of the
    /// command was stored (reminders set before the failing one stay set). If cancelling
    /// failed, the command's events were stored and its other requests carried out; the
    /// reminder is still set (cancel it with `Reminders::cancel`: sending the command again
    /// with the same id answers from the stored events and carries nothing out).
    #[error("actor {actor_id}: a reminder request failed")]
    Reminder {
        /// The actor.
        actor_id: Arc<str>,
        /// What went wrong.
        #[source]
        source: Box<ReminderError>,
    },
    /// The actor stopped without answering (its task ended unexpectedly).
    #[error("actor {actor_id} stopped before answering")]
    NoReply {
        /// The actor.
        actor_id: Arc<str>,
    },
}

impl<E: std::error::Error + 'static> AskError<E> {
    /// The domain error, if the actor refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the actor refused the command (as opposed to a runtime failure).
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// `true` when the store failed in a way that clears by itself ([`StoreError::is_transient`]:
    /// unavailable, timed out, a limit that clears): the same command, with the same command id,
    /// may succeed a little later. Whether the command was applied is unknown.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store { source, .. } => source.is_transient(),
            Self::Reminder { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    #[test]
    fn only_a_store_failure_that_clears_by_itself_is_transient() {
        let store = |source: StoreError| AskError::<Refused>::Store {
            actor_id: "a".into(),
            source: Box::new(source),
        };
        assert!(
            store(StoreError::Timeout {
                context: "appending".into()
            })
            .is_transient()
        );
        assert!(!store(StoreError::backend("appending", "permission denied")).is_transient());
        let rejected = AskError::Rejected {
            actor_id: "a".into(),
            source: Refused,
        };
        assert!(!rejected.is_transient());
    }
}
