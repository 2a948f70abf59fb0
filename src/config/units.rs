//! Human-friendly units in config files: durations ("250ms", "30s", "1m30s") and byte sizes
//! ("64MiB", "512KiB", "1000"). Each parser's error names the expected form so that the
//! key path plus this message is enough for a user to fix the file.

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::time::Duration;

/// How a duration is written, for messages.
const DURATION_FORMS: &str = "write a duration like 5s, 300ms or 1m";

/// How a byte size is written, for messages.
const SIZE_FORMS: &str = "write a size like 64MiB, 512KiB or 1000";

/// A duration written as `humantime` text ("250ms", "30s", "2m") or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses the text form; the error says what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.starts_with('-') {
            return Err(format!("must not be negative: {DURATION_FORMS}"));
        }
        humantime::parse_duration(t).map(Dur).map_err(|e| match e {
            humantime::DurationError::Empty => format!("empty; {DURATION_FORMS}"),
            humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                format!("invalid duration {text:?}: add a unit, like {value}s or {value}ms")
            }
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("invalid duration {text:?}: unknown unit {unit:?}; {DURATION_FORMS}")
            }
            humantime::DurationError::NumberOverflow => format!(
                "invalid duration {text:?}: too long, or finer than a nanosecond; {DURATION_FORMS}"
            ),
            _ => format!("invalid duration {text:?}: {DURATION_FORMS}"),
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 5s, 300ms or 1m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("must not be negative: {DURATION_FORMS}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                if v < 0.0 {
                    return Err(E::custom(format!("must not be negative: {DURATION_FORMS}")));
                }
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom(format!("invalid duration {v}: {DURATION_FORMS}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size written as a plain number or with a unit: B, KB, MB, GB (powers of 1000) or
/// KiB, MiB, GiB (powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// A size unit: its multiplier, and the next smaller unit with how many of it make one.
fn size_unit(unit: &str) -> Option<(u64, Option<(&'static str, u64)>)> {
    Some(match unit {
        "" | "B" => (1, None),
        "KB" | "kB" => (1000, Some(("B", 1000))),
        "MB" => (1000 * 1000, Some(("KB", 1000))),
        "GB" => (1000 * 1000 * 1000, Some(("MB", 1000))),
        "KiB" => (1 << 10, Some(("B", 1024))),
        "MiB" => (1 << 20, Some(("KiB", 1024))),
        "GiB" => (1 << 30, Some(("MiB", 1024))),
        _ => return None,
    })
}

/// The message for a size with a fraction, `whole.frac unit` as written in `text`: the same
/// size in the next smaller unit when that is a whole number, else the rule alone.
fn fraction_message(text: &str, whole: &str, frac: &str, unit: &str) -> String {
    match in_smaller_unit(whole, frac, unit) {
        Some(exact) => format!("whole numbers only: write {exact} instead of {text}"),
        None => "whole numbers only, like 2MiB".to_owned(),
    }
}

/// `whole.frac unit` written in the next smaller unit ("1536KiB" for 1.5 MiB), if it is a
/// whole number there and a size rouse takes.
fn in_smaller_unit(whole: &str, frac: &str, unit: &str) -> Option<String> {
    let (mult, smaller) = size_unit(unit)?;
    let (smaller, ratio) = smaller?;
    if whole.len() > 19 || frac.len() > 15 {
        return None;
    }
    let scale = 10u128.pow(frac.len() as u32);
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scaled = (whole * scale + frac) * u128::from(ratio);
    if !scaled.is_multiple_of(scale) {
        return None;
    }
    let n = scaled / scale;
    let bytes = n.checked_mul(u128::from(mult / ratio))?;
    (bytes <= u128::from(u64::MAX)).then(|| format!("{n}{smaller}"))
}

impl ByteSize {
    /// Parses the text form; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.starts_with('-') {
            return Err(format!("must not be negative: {SIZE_FORMS}"));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        // A fraction ("1.5MiB") is said to be one, with the whole number to write instead.
        if let Some(after) = unit.strip_prefix('.') {
            let digits = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            let (frac, unit) = after.split_at(digits);
            if !(num.is_empty() && frac.is_empty()) && size_unit(unit.trim()).is_some() {
                return Err(fraction_message(t, num, frac, unit.trim()));
            }
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {text:?}: {SIZE_FORMS}"))?;
        let Some((mult, _)) = size_unit(unit.trim()) else {
            return Err(format!(
                "unknown size unit {:?} in {text:?}; use B, KB, MB, GB, KiB, MiB or GiB",
                unit.trim()
            ));
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 64MiB, 512KiB or 1000 (bytes)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("must not be negative: {SIZE_FORMS}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(if v < 0.0 {
                    format!("must not be negative: {SIZE_FORMS}")
                } else {
                    "whole numbers only, like 2MiB".to_owned()
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("10 KB"), Ok(ByteSize(10_000)));
        assert_eq!(ByteSize::parse("17"), Ok(ByteSize(17)));
        assert_eq!(
            ByteSize::parse("12 parsecs"),
            Err("unknown size unit \"parsecs\" in \"12 parsecs\"; use B, KB, MB, GB, KiB, MiB or GiB".to_owned())
        );
        assert_eq!(
            ByteSize::parse("MiB"),
            Err("invalid size \"MiB\": write a size like 64MiB, 512KiB or 1000".to_owned())
        );
        assert!(
            ByteSize::parse("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(
            ByteSize::parse("-5MiB"),
            Err("must not be negative: write a size like 64MiB, 512KiB or 1000".to_owned())
        );
    }

    #[test]
    fn a_fractional_size_gets_the_whole_number_to_write_instead() {
        for (text, want) in [
            (
                "1.5MiB",
                "whole numbers only: write 1536KiB instead of 1.5MiB",
            ),
            ("0.5KiB", "whole numbers only: write 512B instead of 0.5KiB"),
            (
                "2.25GB",
                "whole numbers only: write 2250MB instead of 2.25GB",
            ),
            (
                ".5 MiB",
                "whole numbers only: write 512KiB instead of .5 MiB",
            ),
            // Not whole in the next smaller unit either.
            ("1.1MiB", "whole numbers only, like 2MiB"),
            ("1.0001MB", "whole numbers only, like 2MiB"),
            // Bytes have no smaller unit.
            ("1.5B", "whole numbers only, like 2MiB"),
            ("1.5", "whole numbers only, like 2MiB"),
        ] {
            assert_eq!(ByteSize::parse(text), Err(want.to_owned()), "{text}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("1m30s"), Ok(Dur(Duration::from_secs(90))));
        assert_eq!(Dur::parse(" 250ms "), Ok(Dur(Duration::from_millis(250))));
        let negative = "must not be negative: write a duration like 5s, 300ms or 1m";
        assert_eq!(Dur::parse("-5s"), Err(negative.to_owned()));
        assert_eq!(Dur::parse(" -1m"), Err(negative.to_owned()));
        assert_eq!(
            Dur::parse("soon"),
            Err("invalid duration \"soon\": write a duration like 5s, 300ms or 1m".to_owned())
        );
        assert_eq!(
            Dur::parse("5 parsecs"),
            Err("invalid duration \"5 parsecs\": unknown unit \"parsecs\"; write a duration like 5s, 300ms or 1m".to_owned())
        );
        assert_eq!(
            Dur::parse("30"),
            Err("invalid duration \"30\": add a unit, like 30s or 30ms".to_owned())
        );
        assert_eq!(
            Dur::parse(""),
            Err("empty; write a duration like 5s, 300ms or 1m".to_owned())
        );
    }

    /// The messages as serde passes them on, for the number forms a YAML file can give.
    #[test]
    fn negative_numbers_are_refused_in_words() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct T {
            #[serde(default)]
            d: Option<Dur>,
            #[serde(default)]
            s: Option<ByteSize>,
        }
        let err = |yaml: &str| {
            serde_norway::from_str::<T>(yaml)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let d = "d: must not be negative: write a duration like 5s, 300ms or 1m at line 1 column 4";
        assert_eq!(err("d: -5s"), d);
        assert_eq!(err("d: -5"), d);
        assert_eq!(err("d: -0.5"), d);
        assert_eq!(
            err("s: -5"),
            "s: must not be negative: write a size like 64MiB, 512KiB or 1000 at line 1 column 4"
        );
        assert_eq!(
            err("s: 1.5"),
            "s: whole numbers only, like 2MiB at line 1 column 4"
        );
        assert_eq!(
            err("s: 1.5MiB"),
            "s: whole numbers only: write 1536KiB instead of 1.5MiB at line 1 column 4"
        );
    }
}
