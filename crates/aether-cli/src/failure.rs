//! Why a command failed, as one line that says what to do, and its exit code.

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Problems were found and printed (exit 1).
    #[error("{0}")]
    Problems(String),
    /// The arguments or an input file are wrong (exit 2).
    #[error("{0}")]
    Input(String),
    /// NATS could not be reached (exit 3).
    #[error(
        "cannot connect to NATS at {server}: {reason} (is the server running? set --server or NATS_URL; credentials with --creds, --user/--password or --token)"
    )]
    Connect {
        /// The URLs tried.
        server: String,
        /// What the client said.
        reason: String,
    },
    /// NATS refused or failed a request (exit 3).
    #[error("{what} failed: {reason}")]
    Nats {
        /// What was being done.
        what: String,
        /// What the server or client said.
        reason: String,
    },
    /// The thing asked for does not exist (exit 4).
    #[error("{0}")]
    NotFound(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::Problems(_) => 1,
            Failure::Input(_) => 2,
            Failure::Connect { .. } | Failure::Nats { .. } => 3,
            Failure::NotFound(_) => 4,
        }
    }

    /// A NATS failure while doing `what`, with the whole error chain.
    pub(crate) fn nats(what: impl Into<String>, e: impl std::error::Error + 'static) -> Self {
        Failure::Nats {
            what: what.into(),
            reason: aether_core::error_chain(&e),
        }
    }
}
