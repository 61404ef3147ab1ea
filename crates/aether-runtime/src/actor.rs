//! The [`Actor`] trait: user domain logic, decider style.

use std::fmt;
use std::future::Future;

use serde::de::DeserializeOwned;

use crate::context::Context;
use serde::ser::{self, Impossible, Serialize};

/// An event-sourced actor: its state is the fold of its events.
///
/// `handle` decides (reads the state, returns the events a command causes or a domain error);
/// `apply` evolves (folds one event into the state, and cannot fail). The runtime persists the
/// events with optimistic concurrency before applying them, so `handle` must not mutate anything.
///
/// The state is the actor value itself: `Default` is the state before any event, and serde is
/// how snapshots capture it.
///
/// ```
/// use aether_runtime::Actor;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum CounterEvent { Incremented(u64) }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would overflow")]
/// struct Overflow;
///
/// impl Actor for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = Overflow;
///
///     fn handle(&self, by: &u64) -> Result<Vec<CounterEvent>, Overflow> {
///         self.value.checked_add(*by).ok_or(Overflow)?;
///         Ok(vec![CounterEvent::Incremented(*by)])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Incremented(by) => self.value += by }
///     }
/// }
/// // Stored events are named after the enum variant, with no extra code:
/// assert_eq!(Counter::event_type(&CounterEvent::Incremented(1)), "Incremented");
/// ```
pub trait Actor: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The actor type's name (metrics label, logs).
    const TYPE: &'static str;
    /// The version of the state's shape and of what `apply` means. Snapshots record it; a
    /// snapshot taken under another version is discarded and the actor replays its events
    /// (through the runtime's upcasters) instead. Bump it when a change to the state type or to
    /// `apply` would make an old snapshot wrong. Default 1.
    const STATE_VERSION: u32 = 1;
    /// What callers ask the actor to do.
    type Command: Send + Sync + 'static;
    /// What happened; stored as the event payload (MessagePack).
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// A domain refusal, returned to the caller as is.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events `command` causes, or refuses it. Must not mutate state: it may run
    /// again after a concurrency conflict, on the reloaded state.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The asynchronous form of [`Actor::handle`], which is what the runtime calls. Override it
    /// when deciding needs to await something (a lookup); the default calls `handle`. An actor
    /// that only decides asynchronously can make `handle` refuse with an error.
    fn handle_async(
        &self,
        command: &Self::Command,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send {
        std::future::ready(self.handle(command))
    }

    /// Decides with a [`Context`]: what the runtime calls. Override it to set or cancel
    /// reminders and timers while deciding (they are carried out only if the decision is
    /// stored; see [`Context`]); the default calls [`Actor::handle_async`].
    ///
    /// ```
    /// # use aether_runtime::{Actor, Context};
    /// # use serde::{Deserialize, Serialize};
    /// # use std::time::Duration;
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Order { placed: bool, paid: bool, cancelled: bool }
    /// #[derive(Serialize, Deserialize)]
    /// enum Cmd { Place, Pay, CancelUnpaid }
    /// #[derive(Serialize, Deserialize)]
    /// enum Ev { Placed, Paid, Cancelled }
    /// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
    /// impl Actor for Order {
    ///     const TYPE: &'static str = "order";
    ///     type Command = Cmd;
    ///     type Event = Ev;
    ///     type Error = Never;
    ///     fn handle(&self, cmd: &Cmd) -> Result<Vec<Ev>, Never> {
    ///         Ok(match cmd {
    ///             Cmd::Place if !self.placed => vec![Ev::Placed],
    ///             Cmd::Pay if self.placed && !self.cancelled => vec![Ev::Paid],
    ///             // Harmless when it fires late or twice: decided on the state.
    ///             Cmd::CancelUnpaid if self.placed && !self.paid && !self.cancelled => vec![Ev::Cancelled],
    ///             _ => vec![],
    ///         })
    ///     }
    ///     fn decide(&self, cmd: &Cmd, ctx: &mut Context<Self>)
    ///         -> impl Future<Output = Result<Vec<Ev>, Never>> + Send {
    ///         match cmd {
    ///             Cmd::Place => ctx.remind_after("payment", Duration::from_secs(1800), &Cmd::CancelUnpaid),
    ///             Cmd::Pay => ctx.cancel_reminder("payment"),
    ///             Cmd::CancelUnpaid => {}
    ///         }
    ///         std::future::ready(self.handle(cmd))
    ///     }
    ///     fn apply(&mut self, ev: &Ev) {
    ///         match ev { Ev::Placed => self.placed = true, Ev::Paid => self.paid = true, Ev::Cancelled => self.cancelled = true }
    ///     }
    /// }
    /// ```
    fn decide(
        &self,
        command: &Self::Command,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send {
        let _ = ctx;
        self.handle_async(command)
    }

    /// Called each time the actor is loaded into memory (its first message after a
    /// passivation, or an always-on actor kept active by a cluster node): start its timers
    /// here, since timers do not survive passivation. Reminders set or cancelled here are
    /// carried out too. A panic here is logged and ignored. Default: nothing.
    fn on_activate(&self, ctx: &mut Context<Self>) {
        let _ = ctx;
    }

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// The stored event type of `event`: by default the enum variant's name (or the struct's
    /// name), read through serde, so no boilerplate is needed.
    fn event_type(event: &Self::Event) -> &str {
        event_type_of(event)
    }

    /// The command's name in an EventStorming model, if it has one. With a model loaded
    /// (`Runtime::load_model`, feature `model`), named commands the model does not declare for
    /// this aggregate are refused. Default: unnamed (only events are checked).
    fn command_type(command: &Self::Command) -> Option<&str> {
        let _ = command;
        None
    }
}

/// The name serde gives `value`'s variant (for an enum) or type (for a struct); the last path
/// segment of the Rust type name for anything else.
pub fn event_type_of<E: Serialize + ?Sized>(value: &E) -> &'static str {
    match value.serialize(NameOf) {
        Ok(name) | Err(NotNamed(Some(name))) => name,
        Err(NotNamed(None)) => {
            let full = std::any::type_name::<E>();
            full.rsplit("::").next().unwrap_or(full)
        }
    }
}

/// Serializer that only records the name serde reports, and stops there. Compound values
/// "fail" with their name, so nothing past the name is ever serialized.
struct NameOf;

#[derive(Debug)]
struct NotNamed(Option<&'static str>);

impl fmt::Display for NotNamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("value has no serde name")
    }
}

impl std::error::Error for NotNamed {}

impl ser::Error for NotNamed {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        NotNamed(None)
    }
}

macro_rules! not_named {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> { Err(NotNamed(None)) })*
    };
}

impl ser::Serializer for NameOf {
    type Ok = &'static str;
    type Error = NotNamed;
    type SerializeSeq = Impossible<&'static str, NotNamed>;
    type SerializeTuple = Impossible<&'static str, NotNamed>;
    type SerializeTupleStruct = Impossible<&'static str, NotNamed>;
    type SerializeTupleVariant = Impossible<&'static str, NotNamed>;
    type SerializeMap = Impossible<&'static str, NotNamed>;
    type SerializeStruct = Impossible<&'static str, NotNamed>;
    type SerializeStructVariant = Impossible<&'static str, NotNamed>;

    not_named!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Self::Ok, Self::Error> {
        value.serialize(self)
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<Self::Ok, Self::Error> {
        Ok(name)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Self::Ok, Self::Error> {
        Ok(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _value: &T,
    ) -> Result<Self::Ok, Self::Error> {
        Ok(name)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<Self::Ok, Self::Error> {
        Ok(variant)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        Err(NotNamed(None))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        Err(NotNamed(None))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        Err(NotNamed(Some(name)))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        Err(NotNamed(Some(variant)))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        Err(NotNamed(None))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        Err(NotNamed(Some(name)))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        Err(NotNamed(Some(variant)))
    }
}

#[cfg(test)]
mod tests {
    use super::event_type_of;
    use serde::Serialize;

    #[derive(Serialize)]
    enum E {
        Unit,
        New(u8),
        Tuple(u8, u8),
        Struct { a: u8 },
    }

    #[derive(Serialize)]
    struct Plain {
        a: u8,
    }

    #[derive(Serialize)]
    struct Wrapped(u8);

    #[test]
    fn names_come_from_serde() {
        assert_eq!(event_type_of(&E::Unit), "Unit");
        assert_eq!(event_type_of(&E::New(1)), "New");
        assert_eq!(event_type_of(&E::Tuple(1, 2)), "Tuple");
        assert_eq!(event_type_of(&E::Struct { a: 1 }), "Struct");
        assert_eq!(event_type_of(&Wrapped(1)), "Wrapped");
        assert_eq!(event_type_of(&Plain { a: 1 }), "Plain");
        assert_eq!(event_type_of(&7u8), "u8");
    }
}
