//! # aether-model
//!
//! EventStorming models as data: write the board down (bounded contexts, aggregates with their
//! commands and the events each may emit, domain events with typed fields, policies, read
//! models, external systems, actors, notes), check it, draw it — and, with the `model` feature
//! of `aether-runtime`, run it.
//!
//! ```
//! use aether_model::{Format, Model};
//!
//! let model = Model::parse(r#"
//! name: shop
//! contexts:
//!   - name: sales
//!     actors: [{ name: Customer, issues: [PlaceOrder] }]
//!     aggregates:
//!       - name: Order
//!         commands:
//!           - name: PlaceOrder
//!             fields: [{ name: total, type: money }]
//!             emits: [OrderPlaced]
//!     events:
//!       - name: OrderPlaced
//!         fields: [{ name: total, type: money }]
//! "#, Format::Yaml)?;
//! model.validate()?;
//! assert!(model.to_mermaid().contains("PlaceOrder"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`Model::load`] / [`Model::parse`]: YAML, JSON, TOML (features `yaml`, `json`, `toml`, all
//!   on by default); a parse error names the file, line, column and field path.
//! - [`Model::validate`]: every problem at once, each with its path in the model
//!   (`contexts[sales].aggregates[Order].commands[PlaceOrder].emits[0]: unknown event ...`).
//! - Event versions: an event's current `version`, the older versions still stored
//!   (`previous`) and its former names (`formerly`); validation checks every chain is complete,
//!   and [`DomainEvent::upcast_steps`] lists the upcasting steps the code must register.
//! - [`Model::to_mermaid`], [`Model::to_dot`]: diagrams in EventStorming colours.
//! - From the shell: `cargo xtask model check FILE` and
//!   `cargo xtask model diagram FILE --format mermaid|dot`.

mod diagram;
mod load;
mod model;
mod validate;

pub use diagram::{Graph, NodeKind};
pub use load::{Format, LoadError, Location};
pub use model::{
    Aggregate, BoundedContext, Command, DomainEvent, EventVersion, ExternalSystem, FIELD_TYPES,
    Field, FieldType, FormerName, MAX_FORMER_VERSIONS, Model, Note, Policy, ReadModel, Role,
    is_known_type, parse_duration,
};
pub use validate::{ElementKind, Problem, ProblemKind, ValidationError};
