//! Messages in the words of the file, not of Rust: serde describes a wrong value by Rust's
//! types (``invalid type: integer `-1`, expected u32``); [`plain_words`] says what to write
//! (`expected a whole number from 0 to 4294967295, got -1`).

/// Rewrites a message that serde or the YAML parser gave in Rust's terms into the words of a
/// config file. A trailing `at line L column C` is kept; a message it does not recognise is
/// returned as it is.
pub fn plain_words(message: &str) -> String {
    let (body, at) = split_location(message);
    format!("{}{at}", plain_body(body))
}

/// `a or b`, `one of a, b or c`: the values a key takes.
pub fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [a, b] => format!("{a} or {b}"),
        [rest @ .., last] => format!("one of {} or {last}", rest.join(", ")),
    }
}

/// `a, b and c`: the keys a section takes.
fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The message and its trailing ` at line L column C`, if it has one.
fn split_location(message: &str) -> (&str, &str) {
    if let Some(i) = message.rfind(" at line ")
        && let Some((line, column)) = message[i + " at line ".len()..].split_once(" column ")
        && is_number(line)
        && is_number(column)
    {
        return message.split_at(i);
    }
    (message, "")
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn plain_body(body: &str) -> String {
    // serde's `invalid_type` and `invalid_value`: "invalid type: GOT, expected WANTED".
    if let Some(rest) = body
        .strip_prefix("invalid type: ")
        .or_else(|| body.strip_prefix("invalid value: "))
        && let Some((got, expected)) = rest.rsplit_once(", expected ")
    {
        return expected_got(expected, got);
    }
    if let Some(rest) = body.strip_prefix("invalid length ")
        && let Some((n, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}, got {n} entries", expected_words(expected));
    }
    // "unknown variant `x`, expected one of `a`, `b`, `c`".
    if let Some(rest) = body.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once("`, expected ")
    {
        let names = backticked(expected);
        if !names.is_empty() {
            let got = if value.is_empty() {
                "an empty value".to_owned()
            } else {
                format!("{value:?}")
            };
            return format!("expected {}, got {got}", or_list(&names));
        }
    }
    // "unknown field `x`, expected one of `a`, `b`" or "…, there are no fields".
    if let Some(rest) = body.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once("`, ")
    {
        let names = backticked(tail.strip_prefix("expected ").unwrap_or(""));
        if names.is_empty() {
            return format!("unknown key {field:?}; this section takes no keys");
        }
        let hint = closest(field, &names)
            .map(|n| format!("; did you mean {n:?}? The keys here are "))
            .unwrap_or_else(|| "; the keys here are ".to_owned());
        return format!("unknown key {field:?}{hint}{}", and_list(&names));
    }
    if let Some(rest) = body.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    if let Some(rest) = body.strip_prefix("duplicate field ") {
        return format!("duplicate key {rest}");
    }
    if body.starts_with("data did not match any variant of untagged enum ") {
        return "not a value this key takes".to_owned();
    }
    match body {
        "invalid IP address syntax" => {
            "not an IP address; write one like 10.0.0.5 or fd00::5".to_owned()
        }
        "deserializing from YAML containing more than one document is not supported" => {
            "the file holds more than one YAML document (a line with ---); a config is one document"
                .to_owned()
        }
        other => other.to_owned(),
    }
}

/// "expected WANTED, got GOT" in plain words, with a hint where one helps.
fn expected_got(expected: &str, got: &str) -> String {
    let mut message = format!(
        "expected {}, got {}",
        expected_words(expected),
        got_words(got)
    );
    if let Some(quoted) = got.strip_prefix("string ") {
        let text = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or(quoted);
        let number = text.trim();
        if is_numeric(expected)
            && number.parse::<f64>().is_ok()
            && number.bytes().any(|b| b.is_ascii_digit())
        {
            message.push_str("; write the number without quotes");
        } else if expected == "a sequence" {
            message.push_str(&format!("; write it as a list: [{quoted}]"));
        }
    }
    message
}

/// Whether serde's `expected` names a Rust number type.
fn is_numeric(expected: &str) -> bool {
    matches!(
        expected,
        "u8" | "u16"
            | "u32"
            | "u64"
            | "u128"
            | "usize"
            | "i8"
            | "i16"
            | "i32"
            | "i64"
            | "i128"
            | "isize"
            | "f32"
            | "f64"
    )
}

/// What serde says was expected (a Rust type, or a visitor's own words), as a user writes it.
fn expected_words(expected: &str) -> String {
    let whole = |min: i128, max: u128| format!("a whole number from {min} to {max}");
    let from_zero = |max: u128| whole(0, max);
    match expected {
        "u8" => from_zero(u8::MAX.into()),
        "u16" => from_zero(u16::MAX.into()),
        "u32" => from_zero(u32::MAX.into()),
        "u64" => from_zero(u64::MAX.into()),
        "u128" => from_zero(u128::MAX),
        "usize" => from_zero(usize::MAX as u128),
        "i8" => whole(i8::MIN.into(), i8::MAX as u128),
        "i16" => whole(i16::MIN.into(), i16::MAX as u128),
        "i32" => whole(i32::MIN.into(), i32::MAX as u128),
        "i64" => whole(i64::MIN.into(), i64::MAX as u128),
        "i128" => whole(i128::MIN, i128::MAX as u128),
        "isize" => whole(isize::MIN as i128, isize::MAX as u128),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a string" | "a borrowed string" | "string" => "text".to_owned(),
        "a character" | "char" => "a single character".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping (key: value lines)".to_owned(),
        "path string" | "a borrowed path" => "a file path".to_owned(),
        "IP address" => "an IP address like 10.0.0.5".to_owned(),
        "socket address" => "an address like 127.0.0.1:8080".to_owned(),
        "unit" => "an empty value".to_owned(),
        "option" => "a value or nothing".to_owned(),
        "a YAML tag starting with '!'" => "a single name".to_owned(),
        other if other.starts_with("struct ") => "a mapping (key: value lines)".to_owned(),
        other if other.starts_with("enum ") => "a single name".to_owned(),
        other => other.to_owned(),
    }
}

/// What serde says it got (`integer `-1``, `string "x"`, `sequence`), as a user sees it.
fn got_words(got: &str) -> String {
    let ticked = |prefix: &str| {
        got.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_owned)
    };
    if let Some(v) = ticked("integer `")
        .or_else(|| ticked("floating point `"))
        .or_else(|| ticked("boolean `"))
    {
        return v;
    }
    if let Some(c) = ticked("character `") {
        return format!("text {c:?}");
    }
    if let Some(quoted) = got.strip_prefix("string ") {
        return format!("text {quoted}");
    }
    let plain = match got {
        "unit value" | "Option value" => "an empty value",
        "sequence" => "a list",
        "map" => "a mapping",
        "byte array" => "binary data",
        "enum" | "unit variant" | "newtype variant" | "tuple variant" | "struct variant" => {
            "a value with a YAML tag (!…)"
        }
        "newtype struct" => "a value",
        other => other,
    };
    plain.to_owned()
}

/// The names between backticks in serde's lists: "one of `a`, `b`" → [a, b].
fn backticked(list: &str) -> Vec<&str> {
    list.split('`').skip(1).step_by(2).collect()
}

/// The name in `names` that `typed` most likely misspells, if one is close.
fn closest<'a>(typed: &str, names: &[&'a str]) -> Option<&'a str> {
    let len = typed.chars().count();
    names
        .iter()
        .map(|n| (edit_distance(typed, n), *n))
        .filter(|(d, _)| *d <= 2 && *d < len)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance: the fewest single-character insertions, deletions and substitutions
/// that turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_types_become_what_to_write() {
        for (serde, plain) in [
            (
                "invalid type: integer `-1`, expected u32 at line 5 column 50",
                "expected a whole number from 0 to 4294967295, got -1 at line 5 column 50",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "expected a whole number from 0 to 65535, got 70000",
            ),
            (
                "invalid type: string \"x\", expected u32",
                "expected a whole number from 0 to 4294967295, got text \"x\"",
            ),
            (
                "invalid type: string \"50\", expected u32",
                "expected a whole number from 0 to 4294967295, got text \"50\"; write the number without quotes",
            ),
            (
                "invalid type: floating point `50.5`, expected u32",
                "expected a whole number from 0 to 4294967295, got 50.5",
            ),
            (
                "invalid type: integer `-3`, expected i64",
                "expected a whole number from -9223372036854775808 to 9223372036854775807, got -3",
            ),
            (
                "invalid type: string \"abc\", expected f64",
                "expected a number, got text \"abc\"",
            ),
            (
                "invalid type: string \"yes please\", expected a boolean at line 5 column 24",
                "expected true or false, got text \"yes please\" at line 5 column 24",
            ),
            (
                "invalid type: sequence, expected a string",
                "expected text, got a list",
            ),
            (
                "invalid type: string \"*\", expected a sequence",
                "expected a list, got text \"*\"; write it as a list: [\"*\"]",
            ),
            (
                "invalid type: integer `5`, expected a sequence",
                "expected a list, got 5",
            ),
            (
                "invalid type: integer `5`, expected struct Limits",
                "expected a mapping (key: value lines), got 5",
            ),
            (
                "invalid type: sequence, expected a map",
                "expected a mapping (key: value lines), got a list",
            ),
            (
                "invalid type: unit value, expected u32",
                "expected a whole number from 0 to 4294967295, got an empty value",
            ),
            (
                "invalid type: boolean `true`, expected f64",
                "expected a number, got true",
            ),
            (
                "invalid type: map, expected path string",
                "expected a file path, got a mapping",
            ),
            // A visitor's own words are kept; only the form changes.
            (
                "invalid type: sequence, expected a duration like 5s, 300ms or 1m",
                "expected a duration like 5s, 300ms or 1m, got a list",
            ),
        ] {
            assert_eq!(plain_words(serde), plain, "for {serde:?}");
        }
        assert_eq!(
            plain_words("invalid type: integer `-3`, expected usize"),
            format!("expected a whole number from 0 to {}, got -3", usize::MAX)
        );
    }

    #[test]
    fn names_keys_and_everything_else() {
        for (serde, plain) in [
            (
                "unknown variant `http3`, expected one of `http1`, `h2c`, `auto` at line 8 column 19",
                "expected one of http1, h2c or auto, got \"http3\" at line 8 column 19",
            ),
            (
                "unknown variant `public`, expected `external` or `cluster-local`",
                "expected external or cluster-local, got \"public\"",
            ),
            (
                "unknown variant ``, expected one of `http1`, `h2c`, `auto`",
                "expected one of http1, h2c or auto, got an empty value",
            ),
            (
                "unknown field `bogus`, expected one of `listen`, `admin`, `services` at line 2 column 1",
                "unknown key \"bogus\"; the keys here are listen, admin and services at line 2 column 1",
            ),
            (
                "unknown field `procss`, expected one of `min`, `max`, `process`",
                "unknown key \"procss\"; did you mean \"process\"? The keys here are min, max and process",
            ),
            (
                "unknown field `x`, there are no fields",
                "unknown key \"x\"; this section takes no keys",
            ),
            ("missing field `listen`", "missing key `listen`"),
            (
                "invalid IP address syntax at line 2 column 36",
                "not an IP address; write one like 10.0.0.5 or fd00::5 at line 2 column 36",
            ),
            // Not serde's: left alone.
            (
                "must not be negative: write a duration like 5s, 300ms or 1m at line 2 column 16",
                "must not be negative: write a duration like 5s, 300ms or 1m at line 2 column 16",
            ),
        ] {
            assert_eq!(plain_words(serde), plain, "for {serde:?}");
        }
    }

    #[test]
    fn lists_and_near_misses() {
        assert_eq!(or_list(&["a"]), "a");
        assert_eq!(or_list(&["a", "b"]), "a or b");
        assert_eq!(or_list(&["a", "b", "c"]), "one of a, b or c");
        assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("container_concurency", &["name", "container_concurrency"]),
            Some("container_concurrency")
        );
        assert_eq!(closest("bogus", &["listen", "admin"]), None);
    }
}
