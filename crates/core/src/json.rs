//! Request bodies: JSON decoded with a size limit into typed DTOs, with errors that name the offending field.

use serde::de::DeserializeOwned;

use crate::problem::{ApiError, ErrorKind};

/// Default limit for request bodies of JSON routes.
pub const DEFAULT_LIMIT_BYTES: usize = 64 * 1024;

/// Decodes `body` as JSON into `T`.
///
/// Errors: `413 payload_too_large` over `limit`; `400 malformed_json` for syntax; `400 validation_failed` with the
/// JSON path of the field for wrong types, unknown or missing fields.
pub fn decode<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
    let mut value = None;
    decode_with(body, limit, &mut |tree| {
        value = Some(serde_path_to_error::deserialize(tree)?);
        Ok(())
    })?;
    value.ok_or_else(|| ApiError::internal("no value decoded"))
}

/// What a DTO's decoding is handed: the request's JSON tree, to read the DTO from with its path tracked.
type Reader<'a> = dyn FnMut(serde_json::Value) -> Result<(), serde_path_to_error::Error<serde_json::Error>> + 'a;

/// The checks and errors of [`decode`], compiled once: only reading the DTO is generic (component size).
///
/// The body is first read into a JSON tree ([`Tree`]): a key repeated in an object is refused (the routes' bodies
/// are compared and replayed by their canonical form, which a repeated key would make ambiguous), and a number
/// with a zero fraction such as `54.0` is the integer it equals, as JSON Schema's `integer` says.
fn decode_with(body: &[u8], limit: usize, read: &mut Reader<'_>) -> Result<(), ApiError> {
    if body.len() > limit {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            format!("request body is {} bytes; the limit is {limit}", body.len()),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            "malformed_json",
            "request body is empty; a JSON object is expected",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let tree = serde_path_to_error::deserialize::<_, Tree>(&mut de).map_err(|e| {
        let (path, inner) = (e.path().to_string(), e.into_inner());
        if inner.to_string().starts_with("recursion limit exceeded") {
            ApiError::validation("/", "/: nested too deeply (at most 127 levels of arrays and objects)")
        } else if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                ErrorKind::Invalid,
                "malformed_json",
                format!(
                    "request body is not valid JSON (line {}, column {}); a JSON object is expected",
                    inner.line(),
                    inner.column()
                ),
            )
        } else {
            invalid(&path, &inner.to_string())
        }
    })?;
    de.end().map_err(|_| {
        ApiError::new(ErrorKind::Invalid, "malformed_json", "request body has more data after its JSON value")
    })?;
    read(tree.0).map_err(|e| invalid(&e.path().to_string(), &e.into_inner().to_string()))
}

/// `400 validation_failed` for the field at `path` (`.` is the body itself), in plain words.
fn invalid(path: &str, serde_message: &str) -> ApiError {
    let message = strip_position(serde_message);
    let (field, words) = match (path, quoted_after(&message, "missing field `")) {
        (".", Some(missing)) => (missing.to_owned(), "is required".to_owned()),
        (p, Some(missing)) => (format!("{p}.{missing}"), "is required".to_owned()),
        (".", None) => ("/".to_owned(), plain(&message)),
        (p, None) => (p.to_owned(), plain(&message)),
    };
    ApiError::validation(field.clone(), format!("{field}: {words}"))
}

/// A serde message in the words of the API's documentation: what is allowed, never a Rust type name.
fn plain(message: &str) -> String {
    // serde lists what it expected as "`a`", "`a` or `b`" or "one of `a`, `b`, `c`".
    let allowed = || {
        let expected = message.split_once("expected ").map_or("", |(_, rest)| rest);
        expected.strip_prefix("one of ").unwrap_or(expected).replace('`', "").replace(" or ", ", ")
    };
    if let Some(field) = quoted_after(message, "unknown field `") {
        return match allowed() {
            list if list.is_empty() || list == "nothing" => format!("unknown field `{field}`"),
            list => format!("unknown field `{field}`; allowed fields: {list}"),
        };
    }
    if let Some(field) = quoted_after(message, "duplicate field `") {
        return format!("`{field}` appears more than once");
    }
    if let Some(variant) = quoted_after(message, "unknown variant `") {
        return format!("`{variant}` is not allowed; allowed values: {}", allowed());
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if message.starts_with(prefix)
            && let Some((_, expected)) = message.split_once(", expected ")
        {
            return format!("must be {}", expected_words(expected));
        }
    }
    message.to_owned()
}

/// What serde's `expected …` part means, in the API's words.
fn expected_words(expected: &str) -> String {
    fn whole(min: i128, max: i128) -> String {
        format!("a whole number from {min} to {max}")
    }
    match expected {
        "i8" => whole(i8::MIN.into(), i8::MAX.into()),
        "i16" => whole(i16::MIN.into(), i16::MAX.into()),
        "i32" => whole(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => whole(i64::MIN.into(), i64::MAX.into()),
        "u8" => whole(0, u8::MAX.into()),
        "u16" => whole(0, u16::MAX.into()),
        "u32" => whole(0, u32::MAX.into()),
        "u64" | "usize" => whole(0, u64::MAX.into()),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a string" | "a borrowed string" => "a string".to_owned(),
        "a map" => "an object".to_owned(),
        e if e.starts_with("struct ") || e.starts_with("enum ") => "an object".to_owned(),
        e if e.starts_with("a sequence") || e.starts_with("a tuple") => "a list".to_owned(),
        e => e.replace('`', ""),
    }
}

/// The text between `prefix` and the next backquote.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.split_once(prefix)?.1.split('`').next()
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// A request body as a JSON tree, read with two rules of our own: a key repeated in one object is an error, and a
/// number with a zero fraction within the integer range (`54.0`) is that integer. Objects' keys are inserted in
/// sorted order, so the tree serialises canonically whatever `serde_json::Map` keeps (idempotency fingerprints).
pub(crate) struct Tree(pub(crate) serde_json::Value);

impl<'de> serde::Deserialize<'de> for Tree {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor).map(Tree)
    }
}

struct TreeVisitor;

impl<'de> serde::de::Visitor<'de> for TreeVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Exactly representable integers only: below 2^63 in magnitude every f64 with no fraction is one.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && v > -LIMIT && v < LIMIT {
            return Ok((v as i64).into());
        }
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Tree(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut sorted = std::collections::BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if sorted.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
            }
            let Tree(value) = map.next_value()?;
            sorted.insert(key, value);
        }
        Ok(serde_json::Value::Object(sorted.into_iter().collect()))
    }
}

/// A human-readable text field, trimmed: `Some` when it has 1 to `max_chars` characters and no control characters.
pub fn text(value: &str, max_chars: usize) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && v.chars().count() <= max_chars && !v.chars().any(char::is_control)).then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        amount_fen: i64,
    }

    #[test]
    fn errors_name_the_offending_field() {
        let e = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":"12"}}"#, 1024).expect_err("type");
        assert_eq!((e.code, e.field.as_deref()), ("validation_failed", Some("inner.amount_fen")));
        let e = decode::<Body>(br#"{"name":"a"}"#, 1024).expect_err("missing");
        assert_eq!(e.field.as_deref(), Some("inner"));
        let e = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":1},"x":1}"#, 1024).expect_err("unknown");
        assert_eq!(e.field.as_deref(), Some("x"));
    }

    #[test]
    fn syntax_size_and_trailing_data_are_rejected() {
        assert_eq!(decode::<Body>(b"{", 1024).expect_err("syntax").code, "malformed_json");
        assert_eq!(decode::<Body>(b"", 1024).expect_err("empty").code, "malformed_json");
        assert_eq!(decode::<Body>(&[b' '; 2000], 1024).expect_err("size").code, "payload_too_large");
        let e = decode::<Body>(b"{\"name\":", 1024).expect_err("eof");
        assert_eq!(e.detail, "request body is not valid JSON (line 1, column 8); a JSON object is expected");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = decode::<Body>(deep.as_bytes(), 1024).expect_err("deep");
        assert_eq!((e.code, e.field.as_deref()), ("validation_failed", Some("/")), "{}", e.detail);
        let ok = br#"{"name":"a","inner":{"amount_fen":1}} x"#;
        assert_eq!(decode::<Body>(ok, 1024).expect_err("trailing").code, "malformed_json");
        assert!(decode::<Body>(br#"{"name":"a","inner":{"amount_fen":1}}"#, 1024).is_ok());
    }

    #[test]
    fn integral_numbers_are_integers_whatever_their_spelling() {
        let body = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":54.0}}"#, 1024).expect("54.0 is 54");
        assert_eq!(body.inner.amount_fen, 54);
        let body = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":-1e3}}"#, 1024).expect("-1e3 is -1000");
        assert_eq!(body.inner.amount_fen, -1000);
        let e = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":54.5}}"#, 1024).expect_err("fraction");
        assert_eq!(
            e.detail,
            "inner.amount_fen: must be a whole number from -9223372036854775808 to 9223372036854775807"
        );
        let e = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":1e30}}"#, 1024).expect_err("too large");
        assert_eq!(e.field.as_deref(), Some("inner.amount_fen"));
        let e = decode::<Body>(br#"{"name":"a","inner":{"amount_fen":9223372036854775808}}"#, 1024).expect_err("i64");
        assert_eq!(
            e.detail,
            "inner.amount_fen: must be a whole number from -9223372036854775808 to 9223372036854775807"
        );
    }

    #[test]
    fn messages_are_plain_words() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Small {
            months: u32,
            kind: Kind,
        }
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Kind {
            Water,
            Power,
        }
        let detail = |body: &[u8]| decode::<Small>(body, 1024).expect_err("invalid").detail;
        assert_eq!(
            detail(br#"{"months":5000000000,"kind":"water"}"#),
            "months: must be a whole number from 0 to 4294967295"
        );
        assert_eq!(detail(br#"{"months":"3","kind":"water"}"#), "months: must be a whole number from 0 to 4294967295");
        assert_eq!(detail(br#"{"months":3,"kind":"gas"}"#), "kind: `gas` is not allowed; allowed values: water, power");
        assert_eq!(detail(br#"{"months":3}"#), "kind: is required");
        assert_eq!(
            detail(br#"{"months":3,"kind":"water","x":1}"#),
            "x: unknown field `x`; allowed fields: months, kind"
        );
        assert_eq!(detail(br#"{"months":3,"months":4,"kind":"water"}"#), "/: `months` appears more than once");
        assert_eq!(detail(br#"[1]"#), "/: must be an object");
    }
}
