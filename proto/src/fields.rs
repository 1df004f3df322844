//! Object keys matched to field names the way Go's `encoding/json` does —
//! the original project's gateway decoded with it, so its clients send
//! `{"Items": …}` or `"Resource_ID"` and expect them understood: an exact
//! match, else a case-insensitive one (with Go's two special folds: the
//! Kelvin sign is a `k`, the long s an `s`). A key that matches no field is
//! still refused (a typo must not be silently ignored), and so is a field
//! given twice in any spelling.

use std::fmt;

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

/// Reads an object field by field: `visit(index, map)` for each key, by
/// the index of the field it names in `fields`.
pub fn each_field<'de, A: MapAccess<'de>>(
    map: &mut A,
    fields: &'static [&'static str],
    mut visit: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    while let Some(index) = map.next_key_seed(FieldSeed(fields))? {
        visit(index, map)?;
    }
    Ok(())
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
