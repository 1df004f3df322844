//! Object keys matched to field names the way Go's `encoding/json` does —
//! the original project's gateway decoded with it, so its clients send
//! `{"Items": …}` or `"Resource_ID"` and expect them understood: an exact
//! match, else a case-insensitive one (with Go's two special folds: the
//! Kelvin sign is a `k`, the long s an `s`). A key that matches no field is
//! still refused (a typo must not be silently ignored), and so is a field
//! given twice in any spelling.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// `c` as Go's case folding sees it, for comparison with ASCII field names.
fn fold(c: char) -> char {
    match c {
        '\u{212A}' => 'k',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    }
}

/// Whether object key `key` names field `field` under Go's rules.
pub fn names(key: &str, field: &str) -> bool {
    key == field || key.chars().map(fold).eq(field.chars().map(fold))
}

/// Reads one object key and answers which of `fields` it names (an error
/// naming the expected fields when none), without allocating.
pub struct FieldSeed(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|field| *field == key)
            .or_else(|| self.0.iter().position(|field| names(key, field)))
            .ok_or_else(|| E::unknown_field(key, self.0))
    }
}

/// Stores a field's value once; a second value for it (in any spelling) is
/// an error, since which one was meant cannot be known.
pub fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T, field: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

/// A JSON object decoded field by field with Go's key matching: which
/// fields it has, and what reading each one does.
pub trait Object: Sized {
    /// The documented field names.
    const FIELDS: &'static [&'static str];
    /// What the object is, for "expected …" errors.
    const WHAT: &'static str;
    /// The fields read so far.
    type Partial: Default;
    /// Reads the value of field `index` (of [`Object::FIELDS`]).
    fn read<'de, A: MapAccess<'de>>(partial: &mut Self::Partial, index: usize, map: &mut A) -> Result<(), A::Error>;
    /// The object from its fields, or the first required one missing.
    fn finish<E: de::Error>(partial: Self::Partial) -> Result<Self, E>;
}

/// `T` from `deserializer`, as [`Object`] describes it.
pub fn deserialize<'de, T: Object, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct ObjectVisitor<T>(PhantomData<T>);
    impl<'de, T: Object> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::WHAT)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut partial = T::Partial::default();
            while let Some(index) = map.next_key_seed(FieldSeed(T::FIELDS))? {
                T::read(&mut partial, index, &mut map)?;
            }
            T::finish(partial)
        }
    }
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// A required field's value, or the error naming it.
pub fn required<T, E: de::Error>(value: Option<T>, field: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_as_go_matches_them() {
        for key in ["resource_id", "Resource_ID", "RESOURCE_ID", "resource_Id"] {
            assert!(names(key, "resource_id"), "{key}");
        }
        assert!(names("idempotency_\u{212A}ey", "idempotency_key"), "Go folds the Kelvin sign to k");
        assert!(names("\u{017F}tatus", "status"), "and the long s to s");
        for key in ["resourceid", "resource-id", "résource_id", "resource_id "] {
            assert!(!names(key, "resource_id"), "{key}");
        }
    }
}
