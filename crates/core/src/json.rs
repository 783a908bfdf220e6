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
    decode_with(body, limit, &mut |de| {
        value = Some(serde_path_to_error::deserialize(de)?);
        Ok(())
    })?;
    value.ok_or_else(|| ApiError::internal("no value decoded"))
}

/// What a DTO's decoding is handed: the deserializer, to read the DTO from with its path tracked.
type Reader<'a> = dyn FnMut(
        &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
    ) -> Result<(), serde_path_to_error::Error<serde_json::Error>>
    + 'a;

/// The checks and errors of [`decode`], compiled once: only reading the DTO is generic (component size).
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
    read(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(ErrorKind::Invalid, "malformed_json", format!("request body is not valid JSON: {inner}"))
        } else {
            let field = match path.as_str() {
                "." => missing_field(&inner.to_string()).unwrap_or_else(|| "/".to_owned()),
                p => p.to_owned(),
            };
            ApiError::validation(field, strip_position(&inner.to_string()))
        }
    })?;
    de.end().map_err(|e| ApiError::new(ErrorKind::Invalid, "malformed_json", format!("trailing data after JSON: {e}")))
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_owned)
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
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
        let ok = br#"{"name":"a","inner":{"amount_fen":1}} x"#;
        assert_eq!(decode::<Body>(ok, 1024).expect_err("trailing").code, "malformed_json");
        assert!(decode::<Body>(br#"{"name":"a","inner":{"amount_fen":1}}"#, 1024).is_ok());
    }
}
