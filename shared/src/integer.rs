//! Integers in request bodies as JSON Schema defines them: any JSON number
//! whose fraction is zero, so `17`, `17.0` and `1.7e1` are the same integer
//! while `17.5` is refused. serde's integer types refuse `17.0`, which a
//! client generating JSON from the published schema may well send.
//!
//! One helper for every integer field of a request, whatever its shape:
//! `#[serde(default, deserialize_with = "integer::deserialize")]` on a
//! `u32`, `u64`, `i32` or `i64`, an `Option` of one, or a `Vec` of one.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, SeqAccess, Unexpected, Visitor};

/// The `deserialize_with` function: `T` read with integral numbers accepted.
pub fn deserialize<'de, D: Deserializer<'de>, T: Integral<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize_integral(d)
}

/// A value made of integers, read the JSON Schema way.
pub trait Integral<'de>: Sized {
    fn deserialize_integral<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// Reads one integer of type `T` from any JSON number with a zero fraction.
struct Whole<T>(PhantomData<T>);

/// The bounds of the integer types this module reads, for messages.
trait Bounded: TryFrom<i128> + Copy {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! integral {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
        }

        impl<'de> Integral<'de> for $t {
            fn deserialize_integral<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(Whole::<$t>(PhantomData))
            }
        }
    )*};
}

integral!(u32, u64, i32, i64);

impl<T: Bounded> Whole<T> {
    fn fit<E: de::Error>(&self, v: i128, shown: Unexpected<'_>) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(shown, self))
    }
}

impl<'de, T: Bounded> Visitor<'de> for Whole<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from {} to {}", T::MIN, T::MAX)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.fit(i128::from(v), Unexpected::Unsigned(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.fit(i128::from(v), Unexpected::Signed(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Below 2^53 a whole f64 is the one integer it was written as; from
        // there on it may stand for its neighbours too (an integer literal
        // past i64, such as -9223372036854775809, arrives here as the f64
        // that is i64::MIN), so it is refused rather than rounded into range.
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 2f64.powi(53) {
            self.fit(v as i128, Unexpected::Float(v))
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

impl<'de, T: Integral<'de>> Integral<'de> for Option<T> {
    fn deserialize_integral<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Maybe<T>(PhantomData<T>);

        impl<'de, T: Integral<'de>> Visitor<'de> for Maybe<T> {
            type Value = Option<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or null")
            }

            fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
                T::deserialize_integral(d).map(Some)
            }
        }

        d.deserialize_option(Maybe(PhantomData))
    }
}

impl<'de, T: Integral<'de>> Integral<'de> for Vec<T> {
    fn deserialize_integral<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each<T>(PhantomData<T>);

        impl<'de, T: Integral<'de>> DeserializeSeed<'de> for Each<T> {
            type Value = T;

            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
                T::deserialize_integral(d)
            }
        }

        impl<'de, T: Integral<'de>> Visitor<'de> for Each<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of integers")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(v) = seq.next_element_seed(Each::<T>(PhantomData))? {
                    out.push(v);
                }
                Ok(out)
            }
        }

        d.deserialize_seq(Each(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "deserialize")]
        weight: Option<u32>,
        #[serde(default, deserialize_with = "deserialize")]
        seed: Option<i64>,
        #[serde(default, deserialize_with = "deserialize")]
        ids: Option<Vec<u32>>,
    }

    fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_with_a_zero_fraction_are_integers() {
        for json in [
            r#"{"weight":17}"#,
            r#"{"weight":17.0}"#,
            r#"{"weight":1.7e1}"#,
            r#"{"weight":170e-1}"#,
        ] {
            assert_eq!(parse(json).unwrap().weight, Some(17), "{json}");
        }
        assert_eq!(parse(r#"{"seed":-3.0}"#).unwrap().seed, Some(-3));
        assert_eq!(parse(r#"{"seed":-0.0}"#).unwrap().seed, Some(0));
        assert_eq!(
            parse(r#"{"ids":[1,2.0,3e0]}"#).unwrap().ids,
            Some(vec![1, 2, 3])
        );
    }

    #[test]
    fn absent_and_null_are_none() {
        let b = parse(r#"{"weight":null}"#).unwrap();
        assert_eq!((b.weight, b.seed, b.ids), (None, None, None));
        assert_eq!(parse("{}").unwrap().weight, None);
    }

    #[test]
    fn fractions_are_refused_with_a_clear_message() {
        let e = parse(r#"{"weight":17.5}"#).unwrap_err();
        assert!(
            e.starts_with(
                "invalid value: floating point `17.5`, expected an integer from 0 to 4294967295"
            ),
            "{e}"
        );
        assert!(parse(r#"{"ids":[1,2.5]}"#).is_err());
        assert!(parse(r#"{"seed":1e-7}"#).is_err());
    }

    #[test]
    fn out_of_range_and_non_numbers_are_refused() {
        for json in [
            // Past i64::MIN by one: its f64 is i64::MIN, which must not pass.
            r#"{"seed":-9223372036854775809}"#,
            r#"{"weight":-1}"#,
            r#"{"weight":-1.0}"#,
            r#"{"weight":4294967296}"#,
            r#"{"weight":4294967296.0}"#,
            r#"{"weight":1e300}"#,
            r#"{"seed":9223372036854775808}"#,
            r#"{"seed":1e19}"#,
            r#"{"weight":"17"}"#,
            r#"{"weight":true}"#,
            r#"{"ids":3}"#,
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
        assert_eq!(
            parse(r#"{"weight":4294967295.0}"#).unwrap().weight,
            Some(u32::MAX)
        );
        assert_eq!(
            parse(r#"{"seed":-9223372036854775808}"#).unwrap().seed,
            Some(i64::MIN)
        );
    }
}
