//! EventStorming models in the runtime (feature `model`): checking typed actors against a model,
//! and running aggregates and policies straight from one.
//!
//! - `load`: [`Runtime::load_model`](crate::Runtime::load_model) and [`LoadModelError`]: a
//!   typed actor refuses commands and events its aggregate does not declare.
//! - `actor`: [`ModelActor`], the aggregate with no Rust code of its own, and its
//!   [`ModelCommand`], [`ModelEvent`] and [`ModelError`].
//! - `causes`: [`Causes`], the bounded memory of handled policy triggers ([`MAX_CAUSES`]).
//! - `fields`: command data checked against the declared fields and their types.
//! - `host`: [`ModelRuntime`], which hosts every aggregate of a model and runs its policies.

mod actor;
mod causes;
mod deadline;
mod fields;
mod host;
mod load;

pub use actor::{ModelActor, ModelCommand, ModelError, ModelEvent};
pub use causes::{Causes, MAX_CAUSES};
pub use deadline::Deadlines;
pub use host::ModelRuntime;
pub use load::LoadModelError;
