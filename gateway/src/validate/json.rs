//! The pre-pass over a raw request body, before it is parsed into its type.
//!
//! serde silently keeps the last of two equal keys, so `{"max_tokens": 1,
//! "max_tokens": 8000}` could mean one thing to the limiter and another to a
//! component that reads the body differently. The pre-pass walks the whole
//! document once and refuses: duplicate keys in any object (compared after
//! unescaping), nesting deeper than [`MAX_DEPTH`], and NUL characters (`\u0000`)
//! in any string. Invalid UTF-8, lone surrogate escapes (`"\ud800"`) and
//! trailing data are refused by serde_json itself while walking.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects accepted (a chat body needs 5;
/// JSON schemas in `response_format` rarely pass 20).
pub const MAX_DEPTH: usize = 32;

/// Why a body's shape was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    DuplicateKey(String),
    TooDeep,
    NulCharacter,
    /// serde_json's own error (syntax, encoding, surrogates), with its position.
    Syntax(String),
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::DuplicateKey(k) => write!(f, "the key `{k}` appears twice in one object"),
            ShapeError::TooDeep => write!(f, "the JSON nests deeper than {MAX_DEPTH} levels"),
            ShapeError::NulCharacter => write!(f, "strings must not contain NUL characters"),
            ShapeError::Syntax(e) => write!(f, "invalid JSON: {e}"),
        }
    }
}

/// Walks `body` once; `Ok` when it is one well-formed JSON value of a sane shape.
pub fn check(body: &[u8]) -> Result<(), ShapeError> {
    let problem = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let walked = Walk {
        depth: 0,
        problem: &problem,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (walked, problem.into_inner()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(p)) => Err(p),
        (Err(e), None) => Err(ShapeError::Syntax(e.to_string())),
    }
}

/// Visits every value. A problem found here is stored in `problem` and
/// reported as a bare serde error to stop the walk.
#[derive(Clone, Copy)]
struct Walk<'p> {
    depth: usize,
    problem: &'p RefCell<Option<ShapeError>>,
}

impl Walk<'_> {
    fn fail<E: de::Error>(&self, p: ShapeError) -> E {
        *self.problem.borrow_mut() = Some(p);
        E::custom("refused")
    }

    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(ShapeError::TooDeep));
        }
        Ok(Walk {
            depth: self.depth + 1,
            ..self
        })
    }

    fn text<E: de::Error>(&self, s: &str) -> Result<(), E> {
        if s.contains('\0') {
            return Err(self.fail(ShapeError::NulCharacter));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.text(s)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut keys = Seen::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            self.text(&key)?;
            if let Some(key) = keys.insert(key) {
                return Err(self.fail(ShapeError::DuplicateKey(key.into_owned())));
            }
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// Objects with more keys than this have them hashed; smaller ones (nearly
/// every object of a request) are searched in a list, with no hashing.
const FEW_KEYS: usize = 16;

/// The keys seen so far in one object.
enum Seen<'de> {
    Few(Vec<Key<'de>>),
    Many(HashSet<Key<'de>>),
}

impl Default for Seen<'_> {
    fn default() -> Self {
        Seen::Few(Vec::new())
    }
}

impl<'de> Seen<'de> {
    /// Adds `key`; gives it back if it was seen before.
    fn insert(&mut self, key: Key<'de>) -> Option<Key<'de>> {
        match self {
            Seen::Few(list) if list.contains(&key) => Some(key),
            Seen::Few(list) if list.len() < FEW_KEYS => {
                list.push(key);
                None
            }
            Seen::Few(list) => {
                let mut set: HashSet<Key<'de>> = list.drain(..).collect();
                set.insert(key);
                *self = Seen::Many(set);
                None
            }
            Seen::Many(set) if set.contains(&key) => Some(key),
            Seen::Many(set) => {
                set.insert(key);
                None
            }
        }
    }
}

/// An object key, borrowed from the body unless it had escapes (`Cow`
/// compares and hashes by content, so both forms of one key are equal).
type Key<'de> = Cow<'de, str>;

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_bodies_pass() {
        check(br#"{"a":[1,2,{"b":null,"c":"x"}],"d":true,"e":-1.5e3}"#).unwrap();
        check(br#"{"a":{"k":1},"b":{"k":2}}"#).unwrap();
        check("{\"text\":\"你好 👋 \\u00e9\"}".as_bytes()).unwrap();
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_after_unescaping() {
        assert_eq!(
            check(br#"{"max_tokens":1,"max_tokens":8000}"#),
            Err(ShapeError::DuplicateKey("max_tokens".into()))
        );
        assert_eq!(
            check(br#"{"messages":[{"role":"user","role":"system"}]}"#),
            Err(ShapeError::DuplicateKey("role".into()))
        );
        assert_eq!(
            check(br#"{"n":1,"\u006e":2}"#),
            Err(ShapeError::DuplicateKey("n".into()))
        );
    }

    #[test]
    fn duplicate_keys_are_found_in_objects_of_any_size() {
        for keys in [2, FEW_KEYS, FEW_KEYS + 1, 200] {
            let fields: Vec<String> = (0..keys).map(|i| format!("\"k{i}\":{i}")).collect();
            let body = format!("{{{}}}", fields.join(","));
            check(body.as_bytes()).unwrap();
            // The first key again, and the last: found before and after the list becomes a set.
            for again in [0, keys - 1] {
                let body = format!("{{{},\"k{again}\":0}}", fields.join(","));
                assert_eq!(
                    check(body.as_bytes()),
                    Err(ShapeError::DuplicateKey(format!("k{again}"))),
                    "{keys} keys, k{again} twice"
                );
            }
        }
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        check(ok.as_bytes()).unwrap();
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(check(deep.as_bytes()), Err(ShapeError::TooDeep));
        // Far beyond serde_json's own recursion limit: still an error, no overflow.
        let abyss = "[".repeat(100_000);
        assert!(check(abyss.as_bytes()).is_err());
    }

    #[test]
    fn nul_and_lone_surrogates_are_refused() {
        assert_eq!(check(br#"{"a":"x\u0000y"}"#), Err(ShapeError::NulCharacter));
        assert_eq!(check(br#"{"a\u0000":1}"#), Err(ShapeError::NulCharacter));
        for lone in [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            r#"{"a":"\ud800\u0041"}"#,
        ] {
            assert!(
                matches!(check(lone.as_bytes()), Err(ShapeError::Syntax(_))),
                "{lone}"
            );
        }
        // A proper surrogate pair is fine.
        check(br#"{"a":"\ud83d\ude00"}"#).unwrap();
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_refused() {
        for bad in [
            &b"{"[..],
            b"{\"a\":1}x",
            b"",
            b"\xff",
            b"{\"a\":\"\xc3\x28\"}",
        ] {
            assert!(matches!(check(bad), Err(ShapeError::Syntax(_))));
        }
    }
}
