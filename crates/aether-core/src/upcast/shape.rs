//! `EventShape`: an event on its way through the upcasters, and the helpers steps use on it
//! (fields through the runtime's type tag, renaming the type, decoding).

use crate::error::{BoxError, CodecError};
use crate::payload::Value;

/// An event on its way through the upcasters: its type, its schema version and its payload as a
/// dynamic value. Everything else (id, actor, version in the history, time, metadata) is kept
/// from the stored event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EventShape {
    /// The event type.
    pub event_type: String,
    /// The schema version of `data`'s shape.
    pub schema_version: u32,
    /// The payload.
    pub data: Value,
}

impl EventShape {
    /// A shape of `event_type` at `schema_version` with payload `data` (for split steps).
    pub fn new(event_type: impl Into<String>, schema_version: u32, data: impl Into<Value>) -> Self {
        Self {
            event_type: event_type.into(),
            schema_version,
            data: data.into(),
        }
    }

    /// A shape in the runtime's form of a struct variant: `{"<event_type>": {fields}}` (for
    /// split steps that make events of the actor's enum).
    pub fn variant<'a>(
        event_type: impl Into<String>,
        schema_version: u32,
        fields: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Self {
        let event_type = event_type.into();
        let fields = fields
            .into_iter()
            .map(|(name, value)| (Value::from(name), value))
            .collect();
        let data = Value::Map(vec![(Value::from(event_type.as_str()), Value::Map(fields))]);
        Self {
            event_type,
            schema_version,
            data,
        }
    }

    /// Whether the payload is the externally tagged form `{"<event type>": ..}`.
    fn tagged(&self) -> bool {
        matches!(&self.data, Value::Map(entries)
            if entries.len() == 1
                && entries.first().and_then(|(k, _)| k.as_str()) == Some(self.event_type.as_str()))
    }

    /// The event's fields: the payload map, or the map inside its type tag. `None` when the
    /// payload has no named fields (a number, a list, nil, a unit variant).
    pub fn fields(&self) -> Option<&Vec<(Value, Value)>> {
        match &self.data {
            Value::Map(entries) if self.tagged() => match entries.first() {
                Some((_, Value::Map(inner))) => Some(inner),
                _ => None,
            },
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The event's fields, to change them; see [`EventShape::fields`].
    pub fn fields_mut(&mut self) -> Option<&mut Vec<(Value, Value)>> {
        let tagged = self.tagged();
        let Value::Map(entries) = &mut self.data else {
            return None;
        };
        if !tagged {
            return Some(entries);
        }
        match entries.first_mut() {
            Some((_, Value::Map(inner))) => Some(inner),
            _ => None,
        }
    }

    /// The value of field `name`, if the payload has it.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    }

    /// Sets field `name` (replacing it if present). A unit variant (`"<event type>"`) becomes a
    /// struct variant with this one field. Fails when the payload has no named fields.
    pub fn set_field(&mut self, name: &str, value: impl Into<Value>) -> Result<(), BoxError> {
        if self.data.as_str() == Some(self.event_type.as_str()) {
            self.data = Value::Map(vec![(
                Value::from(self.event_type.as_str()),
                Value::Map(Vec::new()),
            )]);
        }
        if self.fields().is_none() {
            return Err(format!("the payload of {} has no named fields", self.describe()).into());
        }
        let Some(fields) = self.fields_mut() else {
            return Ok(());
        };
        let value = value.into();
        match fields.iter_mut().find(|(k, _)| k.as_str() == Some(name)) {
            Some((_, slot)) => *slot = value,
            None => fields.push((Value::from(name), value)),
        }
        Ok(())
    }

    /// Removes field `name` and returns its value (`None` when absent or without fields).
    pub fn remove_field(&mut self, name: &str) -> Option<Value> {
        let fields = self.fields_mut()?;
        let at = fields.iter().position(|(k, _)| k.as_str() == Some(name))?;
        Some(fields.remove(at).1)
    }

    /// Renames the event type, and the payload's type tag with it (`{"Old": ..}` becomes
    /// `{"New": ..}`, `"Old"` becomes `"New"`).
    pub fn retype(&mut self, event_type: impl Into<String>) {
        let event_type = event_type.into();
        if self.data.as_str() == Some(self.event_type.as_str()) {
            self.data = Value::from(event_type.as_str());
        } else if self.tagged()
            && let Value::Map(entries) = &mut self.data
            && let Some((tag, _)) = entries.first_mut()
        {
            *tag = Value::from(event_type.as_str());
        }
        self.event_type = event_type;
    }

    /// Decodes the payload into `T` (as [`crate::Event::decode`] would the payload of an event of
    /// this shape).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, CodecError> {
        let mut bytes = Vec::with_capacity(64);
        rmpv::encode::write_value(&mut bytes, &self.data)
            .map_err(|e| CodecError::encode("rmpv::Value", e))?;
        rmp_serde::from_slice(&bytes).map_err(|e| CodecError::decode(std::any::type_name::<T>(), e))
    }

    fn describe(&self) -> String {
        format!("{} v{}", self.event_type, self.schema_version)
    }
}
