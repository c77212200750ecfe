//! Serde plumbing for `[[port]]` tables: a deserializer over a [`toml::Value`] whose
//! error is structured ([`DeError`]), so that a failure can be told apart (a missing
//! key, a key no driver takes, a bad value) and reported in the file's style, with
//! the key and the value, whether the table came from the file or from `add-port`.
//!
//! Serde buffers an internally tagged enum's content before it picks the variant, so
//! an error about a value does not say which key held it: [`culprit`] finds the key
//! by deserializing each key of the table alone.

use super::raw::{RawPort, DRIVERS};
use serde::de::{self, Expected, IntoDeserializer, Unexpected, Visitor};
use serde::Deserialize;
use std::fmt;
use toml::{Table, Value};

/// Why serde refused a table, as serde told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeError {
    /// A required key is absent.
    MissingField(&'static str),
    /// A key the table's type does not have, and the keys it has.
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    /// A string that is none of the keywords the key takes.
    UnknownVariant {
        value: String,
        expected: &'static [&'static str],
    },
    /// A value of the wrong type: what was found and what the key takes.
    InvalidType {
        found: String,
        expected: String,
    },
    /// A value of the right type that the key's type cannot hold.
    InvalidValue {
        found: String,
        expected: String,
    },
    Custom(String),
}

impl std::error::Error for DeError {}

/// What a key takes, in words (serde says `i64` and `a sequence`).
fn human(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer".into(),
        "a sequence" => "an array".into(),
        "path string" | "string or map" => "a string".into(),
        other => other.to_string(),
    }
}

/// `"a", "b" or "c"`.
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The part after `key 'k' = v: ` (or the whole message for the two kinds that
/// carry their key).
impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::MissingField(k) => write!(f, "key '{k}' is missing"),
            DeError::UnknownField { field, .. } => write!(f, "unknown field `{field}`"),
            DeError::UnknownVariant { expected, .. } => write!(f, "must be {}", one_of(expected)),
            DeError::InvalidType { found, expected }
            | DeError::InvalidValue { found, expected } => {
                write!(f, "expected {}, found {found}", human(expected))
            }
            DeError::Custom(m) => f.write_str(m),
        }
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Custom(msg.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::MissingField(field)
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownField {
            field: field.to_string(),
            expected,
        }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownVariant {
            value: variant.to_string(),
            expected,
        }
    }
    fn invalid_type(unexp: Unexpected, exp: &dyn Expected) -> Self {
        DeError::InvalidType {
            found: unexp.to_string(),
            expected: exp.to_string(),
        }
    }
    fn invalid_value(unexp: Unexpected, exp: &dyn Expected) -> Self {
        DeError::InvalidValue {
            found: unexp.to_string(),
            expected: exp.to_string(),
        }
    }
}

/// A TOML value as a serde deserializer with [`DeError`] as its error.
pub(crate) struct Val(pub Value);

impl<'de> IntoDeserializer<'de, DeError> for Val {
    type Deserializer = Val;
    fn into_deserializer(self) -> Val {
        self
    }
}

impl<'de> de::Deserializer<'de> for Val {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::String(s) => v.visit_string(s),
            Value::Integer(i) => v.visit_i64(i),
            Value::Float(x) => v.visit_f64(x),
            Value::Boolean(b) => v.visit_bool(b),
            Value::Datetime(d) => v.visit_string(d.to_string()),
            Value::Array(a) => {
                let mut seq = de::value::SeqDeserializer::new(a.into_iter().map(Val));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Table(t) => {
                let mut map =
                    de::value::MapDeserializer::new(t.into_iter().map(|(k, x)| (k, Val(x))));
                let out = v.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }

    /// A value that is there is `Some` (TOML has no null).
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    /// A keyword: only a string can be one, and anything else is told with the list.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::String(s) => v.visit_enum(s.into_deserializer()),
            other => Err(DeError::UnknownVariant {
                value: other.to_string(),
                expected: variants,
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// Deserializes a `[[port]]` table (serde alone: types, keywords, keys per driver).
pub(crate) fn raw_port(table: &Table) -> Result<RawPort, DeError> {
    RawPort::deserialize(Val(Value::Table(table.clone())))
}

/// A table with `key = value` and just enough besides (a name, the table's driver)
/// for serde to judge that one key: its error, or `None` when the key is fine.
fn judge(key: &str, value: &Value, driver: Option<&Value>) -> Option<DeError> {
    let mut t = Table::new();
    t.insert("name".into(), Value::String("x".into()));
    if let Some(d) = driver {
        t.insert("driver".into(), d.clone());
    }
    t.insert(key.into(), value.clone());
    match raw_port(&t) {
        Ok(_) | Err(DeError::MissingField(_)) => None,
        Err(e) => Some(e),
    }
}

/// The key whose value serde refused, with serde's error for that key alone: the
/// driver first (every other key is judged against it), then the others in order.
pub(crate) fn culprit(table: &Table) -> Option<(String, Value, DeError)> {
    let driver = table.get("driver");
    if let Some(d) = driver {
        if let Some(e) = judge("driver", d, None) {
            return Some(("driver".into(), d.clone(), e));
        }
    }
    table
        .iter()
        .filter(|(k, _)| k.as_str() != "driver")
        .find_map(|(k, v)| judge(k, v, driver).map(|e| (k.clone(), v.clone(), e)))
}

/// The drivers that take `key`.
pub(crate) fn drivers_taking(key: &str, value: &Value) -> Vec<&'static str> {
    DRIVERS
        .iter()
        .copied()
        .filter(|d| {
            let dv = Value::String((*d).into());
            !matches!(
                judge(key, value, Some(&dv)),
                Some(DeError::UnknownField { .. })
            )
        })
        .collect()
}
