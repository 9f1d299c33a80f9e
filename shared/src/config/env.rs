//! Which `TOLLGATE_*` environment variables are config overrides.
//!
//! Only `TOLLGATE_<SECTION>__<KEY>` and the top-level keys are config; other
//! tools put their own `TOLLGATE_*` variables in the environment (a binary's
//! path, a test switch), and one of those must not stop every command.

use std::sync::Once;

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::RawConfig;

/// Variables under the prefix that belong to Tollgate but are not config keys:
/// read elsewhere, so skipped without a warning.
const NON_CONFIG_ENV: &[&str] = &[
    "config",
    "jwt_secret",
    "cluster_secret",
    "log",
    "bench_secret",
    "test_python",
    "update_deploy",
];

/// Whether the variable named `key` (prefix removed) goes to the config.
/// A `__` one always does, so a mistyped key still fails loudly.
pub(super) fn is_config(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    if NON_CONFIG_ENV.contains(&lower.as_str()) {
        return false;
    }
    lower.contains("__") || top_level_keys().contains(&lower.as_str())
}

/// Says once per process which variables under `prefix` are ignored: a
/// stderr line, since the config is read before the logger is set up.
pub(super) fn warn_ignored(prefix: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for name in ignored(prefix, std::env::vars().map(|(k, _)| k)) {
            eprintln!(
                "warning: ignoring environment variable {name}: not a config key \
                 (config overrides are {prefix}<SECTION>__<KEY>)"
            );
        }
    });
}

/// The variables among `names` under `prefix` that are neither config nor known.
pub(super) fn ignored(prefix: &str, names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter(|n| {
            n.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        })
        .filter(|n| {
            let key = &n[prefix.len()..];
            !is_config(key) && !NON_CONFIG_ENV.contains(&key.to_ascii_lowercase().as_str())
        })
        .collect()
}

/// `RawConfig`'s field names, as serde sees them, so this list cannot drift
/// from the struct.
fn top_level_keys() -> &'static [&'static str] {
    let mut probe = FieldProbe(&[]);
    // The probe always refuses to produce a value; it only records the fields.
    let _ = RawConfig::deserialize(&mut probe);
    probe.0
}

/// A deserializer that records the field list serde asks it for, then stops.
struct FieldProbe(&'static [&'static str]);

impl<'de> de::Deserializer<'de> for &mut FieldProbe {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_underscore_names_of_no_key_are_not_config_and_are_reported() {
        assert!(top_level_keys().contains(&"shutdown_grace_secs"));
        assert!(top_level_keys().contains(&"gateway"));
        assert!(!is_config("BIN"));
        assert!(!is_config("LOG"));
        assert!(is_config("SHUTDOWN_GRACE_SECS"));
        assert!(is_config("GATEWAY__LISTEN"));
        assert!(is_config("GATEWAY__NO_SUCH_KEY"));
        let names = [
            "TOLLGATE_BIN",
            "TOLLGATE_LOG",
            "TOLLGATE_GATEWAY__LISTEN",
            "PATH",
        ];
        assert_eq!(
            ignored("TOLLGATE_", names.iter().map(|s| s.to_string())),
            ["TOLLGATE_BIN"]
        );
    }
}
