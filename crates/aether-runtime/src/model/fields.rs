//! Command data against declared fields: presence, declared names and field types.

use aether_model::{Field, FieldType};
use serde_json::{Map, Value};

use super::actor::ModelError;

/// Checks the data of `command` against its declared `fields`: each required one present,
/// each given one of its declared type, and none undeclared.
pub(super) fn check_fields(
    command: &str,
    fields: &[Field],
    data: &Map<String, Value>,
) -> Result<(), ModelError> {
    for f in fields {
        match data.get(&f.name) {
            None | Some(Value::Null) if f.required => {
                return Err(ModelError::MissingField {
                    command: command.to_owned(),
                    field: f.name.clone(),
                });
            }
            Some(v) if !v.is_null() && !has_type(&f.ty, v) => {
                return Err(ModelError::WrongType {
                    command: command.to_owned(),
                    field: f.name.clone(),
                    expected: f.ty.clone(),
                    got: v.to_string(),
                });
            }
            _ => {}
        }
    }
    if let Some(extra) = data.keys().find(|k| !fields.iter().any(|f| &f.name == *k)) {
        return Err(ModelError::UndeclaredField {
            command: command.to_owned(),
            field: extra.clone(),
        });
    }
    Ok(())
}

/// Whether `value` fits the model field type `ty` (an unknown type fits nothing; a loaded model
/// has none: validation refuses them).
fn has_type(ty: &str, value: &Value) -> bool {
    FieldType::parse(ty).is_some_and(|t| fits(&t, value))
}

fn fits(ty: &FieldType, value: &Value) -> bool {
    match ty {
        FieldType::List(inner) => value
            .as_array()
            .is_some_and(|items| items.iter().all(|v| fits(inner, v))),
        FieldType::String => value.is_string(),
        FieldType::Integer => value.is_i64() || value.is_u64(),
        FieldType::Number => value.is_number(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Timestamp => value.is_string() || value.is_i64() || value.is_u64(),
        FieldType::Uuid => value.as_str().is_some_and(is_uuid),
        FieldType::Money => {
            value.is_number() || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok())
        }
        FieldType::Object => value.is_object(),
        _ => false,
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
