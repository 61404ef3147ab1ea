//! The model types: what an EventStorming board holds, as serde data.

use serde::{Deserialize, Serialize};

/// A whole model: bounded contexts and free-form notes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The model's name.
    pub name: String,
    /// What it describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The bounded contexts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<BoundedContext>,
    /// Notes about the whole model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

/// A bounded context: one part of the domain with its own language.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundedContext {
    /// The context's name.
    pub name: String,
    /// What it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Aggregates (consistency boundaries that take commands and emit events).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<Aggregate>,
    /// Domain events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<DomainEvent>,
    /// Policies: "when event E, issue command C to aggregate A".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    /// Read models and the events they consume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_models: Vec<ReadModel>,
    /// External systems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_systems: Vec<ExternalSystem>,
    /// Actors (people or roles) that issue commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<Role>,
    /// Notes about this context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

/// An aggregate and the commands it handles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The aggregate's name (also the actor type of a model-driven actor).
    pub name: String,
    /// What it guards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The commands it handles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Command>,
}

/// A command, its fields and the events it may emit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The command's name.
    pub name: String,
    /// Its fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// The events it may emit (by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emits: Vec<String>,
}

/// A domain event, its fields, and the older shapes and names of it that may still be stored.
///
/// Stored events carry a schema version (1 when absent). An event at version `N` may still
/// have stored events of versions `1..N`, each of which the code upcasts one step at a time;
/// stored events under a former name are upcast into this event. [`DomainEvent::upcast_steps`]
/// lists every step the code must register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEvent {
    /// The event's name (its stored event type).
    pub name: String,
    /// Its current schema version: the version new events are stored with (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub version: u32,
    /// Its fields (at the current version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// The older versions that may still be stored: every version from 1 to `version - 1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<EventVersion>,
    /// Former names of this event whose stored events are upcast into it (renames).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formerly: Vec<FormerName>,
}

impl Default for DomainEvent {
    /// An unnamed event at version 1, without fields, older versions or former names.
    fn default() -> Self {
        Self {
            name: String::new(),
            version: 1,
            fields: Vec::new(),
            previous: Vec::new(),
            formerly: Vec::new(),
        }
    }
}

impl DomainEvent {
    /// The event's current schema version (the one new events are stored with).
    pub fn current_version(&self) -> u32 {
        self.version
    }

    /// Every upcasting step the code must register for this event, as (stored event type,
    /// version the step upcasts from): `(name, v)` for each older version `v` in
    /// `1..version`, then `(former, v)` for each former name and each of its stored versions
    /// `v` in `1..=versions`, in the order the model lists them.
    ///
    /// The step for `(name, v)` turns a stored event of this type and version `v` into
    /// version `v + 1`. The steps of a former name `F` with `versions: k` turn `F` version `v`
    /// into `F` version `v + 1` for `v < k`, and the last, `(F, k)`, turns `F` version `k`
    /// into this event (from where this event's own steps carry it to the current version).
    ///
    /// ```
    /// use aether_model::{DomainEvent, EventVersion, FormerName};
    ///
    /// let event = DomainEvent {
    ///     name: "MoneyDeposited".into(),
    ///     version: 3,
    ///     previous: vec![
    ///         EventVersion { version: 1, ..Default::default() },
    ///         EventVersion { version: 2, ..Default::default() },
    ///     ],
    ///     formerly: vec![FormerName { name: "Credited".into(), versions: 2 }],
    ///     ..Default::default()
    /// };
    /// assert_eq!(event.current_version(), 3);
    /// assert_eq!(
    ///     event.upcast_steps(),
    ///     [
    ///         ("MoneyDeposited".to_owned(), 1),
    ///         ("MoneyDeposited".to_owned(), 2),
    ///         ("Credited".to_owned(), 1),
    ///         ("Credited".to_owned(), 2),
    ///     ]
    /// );
    /// // An event at version 1 with no former names needs no step.
    /// assert!(DomainEvent { name: "Opened".into(), ..Default::default() }.upcast_steps().is_empty());
    /// ```
    pub fn upcast_steps(&self) -> Vec<(String, u32)> {
        let own = (1..self.version).map(|v| (self.name.clone(), v));
        let former = self
            .formerly
            .iter()
            .flat_map(|f| (1..=f.versions).map(|v| (f.name.clone(), v)));
        own.chain(former).collect()
    }
}

/// Most stored versions a former name may claim (`formerly[].versions`): a model cannot make
/// [`DomainEvent::upcast_steps`] list more steps than this per former name.
pub const MAX_FORMER_VERSIONS: u32 = 1000;

/// An older version of an event that may still be stored (its shape, for the record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventVersion {
    /// The version: from 1 to the event's current version minus one.
    pub version: u32,
    /// The event's fields at that version (documentation of the old shape; optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// What changed, or anything else worth knowing about this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A former name of an event: stored events of that type, versions 1 to `versions`, are
/// upcast into the event that lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormerName {
    /// The former event type, as stored; no live event of the model may have it.
    pub name: String,
    /// The last version stored under that name (default 1): stored versions are
    /// `1..=versions`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub versions: u32,
}

/// A field of a command or an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// Its type: one of [`FIELD_TYPES`], or `list<T>` of one of them.
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether it must be present (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The field types a model may use (and `list<T>` of each).
pub const FIELD_TYPES: [&str; 8] = [
    "string",
    "integer",
    "number",
    "boolean",
    "timestamp",
    "uuid",
    "money",
    "object",
];

/// Whether `ty` is a known field type.
pub fn is_known_type(ty: &str) -> bool {
    FieldType::parse(ty).is_some()
}

/// A field's type, parsed from the model's text (`string`, ..., `list<T>`). The one definition
/// both the model's validation and the runtime's checks of command data use.
///
/// ```
/// use aether_model::FieldType;
/// assert_eq!(FieldType::parse("list<uuid>"), Some(FieldType::List(FieldType::Uuid.into())));
/// assert_eq!(FieldType::parse("list<list<uuid>>"), None); // one level of list only
/// assert_eq!(FieldType::List(FieldType::Money.into()).to_string(), "list<money>");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldType {
    /// `string`
    String,
    /// `integer`
    Integer,
    /// `number`
    Number,
    /// `boolean`
    Boolean,
    /// `timestamp`
    Timestamp,
    /// `uuid`
    Uuid,
    /// `money`
    Money,
    /// `object`
    Object,
    /// `list<T>` of a scalar type `T`.
    List(Box<FieldType>),
}

impl FieldType {
    /// Parses a type as written in a model; `None` for an unknown one.
    pub fn parse(ty: &str) -> Option<Self> {
        if let Some(inner) = ty.strip_prefix("list<").and_then(|t| t.strip_suffix('>')) {
            return Self::scalar(inner).map(|t| Self::List(Box::new(t)));
        }
        Self::scalar(ty)
    }

    fn scalar(ty: &str) -> Option<Self> {
        Some(match ty {
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            "timestamp" => Self::Timestamp,
            "uuid" => Self::Uuid,
            "money" => Self::Money,
            "object" => Self::Object,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod field_type_tests {
    use super::*;

    /// `FIELD_TYPES` (the names docs and errors list) and `FieldType` agree, both ways.
    #[test]
    fn the_names_and_the_enum_agree() {
        for name in FIELD_TYPES {
            let ty = FieldType::parse(name).unwrap_or_else(|| panic!("{name} does not parse"));
            assert_eq!(ty.to_string(), name);
            let list = format!("list<{name}>");
            assert_eq!(FieldType::parse(&list).map(|t| t.to_string()), Some(list));
        }
        assert_eq!(FieldType::parse("decimal"), None);
    }
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
            Self::Uuid => "uuid",
            Self::Money => "money",
            Self::Object => "object",
            Self::List(inner) => return write!(f, "list<{inner}>"),
        };
        f.write_str(name)
    }
}

/// "When event `when` happens, issue command `issue` to aggregate `to`."
///
/// With a deadline (`within`): "when `when` happens and none of `unless` follows on the same
/// actor within `within`, issue `issue`" (e.g. when OrderPlaced and no PaymentReceived within
/// 30m then CancelOrder). The model runtime keeps the deadline as a durable reminder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// The triggering event.
    pub when: String,
    /// The command it issues.
    pub issue: String,
    /// The aggregate that receives the command.
    pub to: String,
    /// The field of the triggering event whose value is the target actor's id; when absent,
    /// the target has the triggering event's actor id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_field: Option<String>,
    /// A deadline: the command is issued this long after the triggering event (a duration such
    /// as `30m`, `1h30m`, `45s`, `2d`: whole numbers with units `d`, `h`, `m`, `s`), and only if
    /// none of the `unless` events was stored on the triggering actor meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    /// The events that, stored on the triggering actor before the deadline, mean the command is
    /// not issued (only with `within`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unless: Vec<String>,
}

impl Policy {
    /// The deadline `within` gives, if any and if it parses.
    pub fn deadline(&self) -> Option<std::time::Duration> {
        self.within.as_deref().and_then(parse_duration)
    }
}

/// Parses a duration written as whole numbers with units `d`, `h`, `m` and `s`, largest first
/// (`30m`, `1h30m`, `2d`, `45s`), at most 100 years; `None` for anything else or for zero.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    let mut last_unit = u64::MAX;
    for c in text.trim().chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if unit >= last_unit {
            return None;
        }
        last_unit = unit;
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    // Zero, a number without a unit, or past 100 years: not a deadline.
    if number.is_some() || total == 0 || total > 100 * 366 * 86_400 {
        return None;
    }
    Some(std::time::Duration::from_secs(total))
}

/// A read model and the events that feed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadModel {
    /// The read model's name.
    pub name: String,
    /// The events it consumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumes: Vec<String>,
}

/// A system outside the model that issues commands or consumes events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSystem {
    /// The system's name.
    pub name: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Commands it issues.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    /// Events it consumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumes: Vec<String>,
}

/// A person or role that issues commands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// The role's name.
    pub name: String,
    /// Commands it issues.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
}

/// A free-form note (a pink sticky), optionally about one element.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Note {
    /// The text.
    pub text: String,
    /// The element it is about, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
}

impl Model {
    /// An empty model named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: None,
            contexts: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Every aggregate, with its context.
    pub fn aggregates(&self) -> impl Iterator<Item = (&BoundedContext, &Aggregate)> {
        self.contexts
            .iter()
            .flat_map(|c| c.aggregates.iter().map(move |a| (c, a)))
    }

    /// The aggregate named `name`.
    pub fn aggregate(&self, name: &str) -> Option<&Aggregate> {
        self.aggregates().map(|(_, a)| a).find(|a| a.name == name)
    }

    /// The domain event named `name`.
    pub fn event(&self, name: &str) -> Option<&DomainEvent> {
        self.contexts
            .iter()
            .flat_map(|c| &c.events)
            .find(|e| e.name == name)
    }

    /// Every policy.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.contexts.iter().flat_map(|c| &c.policies)
    }

    /// The number of elements (aggregates, commands, events, policies, read models, external
    /// systems, actors, notes) — one node each in a diagram.
    pub fn element_count(&self) -> usize {
        self.notes.len()
            + self
                .contexts
                .iter()
                .map(|c| {
                    c.aggregates.len()
                        + c.aggregates.iter().map(|a| a.commands.len()).sum::<usize>()
                        + c.events.len()
                        + c.policies.len()
                        + c.read_models.len()
                        + c.external_systems.len()
                        + c.actors.len()
                        + c.notes.len()
                })
                .sum::<usize>()
    }
}

impl Aggregate {
    /// The command named `name`.
    pub fn command(&self, name: &str) -> Option<&Command> {
        self.commands.iter().find(|c| c.name == name)
    }
}
