//! The accept API's query string: `id` (a base-10 `i64`, given once) and an optional
//! percent-encoded `endpoint`. Parsing borrows from the request buffer and allocates nothing;
//! only an `endpoint` is decoded, into a scratch buffer the connection reuses.

use percent_encoding::percent_decode;

/// Longest `endpoint` accepted, in bytes after percent-decoding (README, *API*).
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// A valid accept request, still borrowing from the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept<'a> {
    pub id: i64,
    /// The raw, still percent-encoded value of `endpoint`, when given.
    pub endpoint: Option<&'a [u8]>,
}

/// Why a query was refused: each one is a 400 `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("id is missing")]
    MissingId,
    #[error("id is empty")]
    EmptyId,
    #[error("id is not a base-10 64-bit signed integer")]
    BadId,
    #[error("id is given more than once")]
    RepeatedId,
    #[error("endpoint is given more than once")]
    RepeatedEndpoint,
    #[error("endpoint is not a valid http or https URL of at most 2048 bytes")]
    BadEndpoint,
    /// The URL is well formed but its host is not one verve may call (`--endpoint-allow`,
    /// or an address of the host's own network).
    #[error("endpoint names a host that may not be called")]
    EndpointNotAllowed,
}

/// Parses the part of the target after `?`. Parameters other than `id` and `endpoint` are
/// ignored (README, *API*); names are matched exactly (not decoded).
pub fn parse_accept(query: &[u8]) -> Result<Accept<'_>, QueryError> {
    let mut id = None;
    let mut endpoint = None;
    for pair in query.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        match name {
            b"id" => {
                if id.is_some() {
                    return Err(QueryError::RepeatedId);
                }
                id = Some(value);
            }
            b"endpoint" => {
                if endpoint.is_some() {
                    return Err(QueryError::RepeatedEndpoint);
                }
                endpoint = Some(value);
            }
            _ => {}
        }
    }
    let id = match id {
        None => return Err(QueryError::MissingId),
        Some([]) => return Err(QueryError::EmptyId),
        Some(raw) => parse_id(raw).ok_or(QueryError::BadId)?,
    };
    if let Some(raw) = endpoint {
        // Cheap bound before decoding: a decoded byte needs at least one encoded byte.
        if raw.is_empty() || raw.len() > 3 * MAX_ENDPOINT_BYTES {
            return Err(QueryError::BadEndpoint);
        }
    }
    Ok(Accept { id, endpoint })
}

/// `-?[0-9]+` over the whole `i64` range and nothing else: no `+`, no spaces, no percent
/// escapes (`str::parse` would accept a leading `+`). Accumulates negatively so that
/// `i64::MIN` parses without overflow.
///
/// ```
/// use verve::query::parse_id;
/// assert_eq!(parse_id(b"-9223372036854775808"), Some(i64::MIN));
/// assert_eq!(parse_id(b"007"), Some(7));
/// assert_eq!(parse_id(b"+7"), None);
/// assert_eq!(parse_id(b"9223372036854775808"), None);
/// ```
#[inline]
pub fn parse_id(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() {
        return None;
    }
    let mut acc: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc = acc.checked_mul(10)?.checked_sub(d as i64)?;
    }
    if negative {
        Some(acc)
    } else {
        acc.checked_neg()
    }
}

/// Percent-decodes `raw` into `scratch` (cleared first) and checks what can be checked without
/// parsing the URL: size, UTF-8, scheme, and no bytes that could forge a log line or hide in
/// a URL (controls, spaces). The full URL parse happens once per window and worker, in
/// [`crate::endpoints`].
pub fn decode_endpoint<'s>(raw: &[u8], scratch: &'s mut Vec<u8>) -> Result<&'s str, QueryError> {
    scratch.clear();
    if !well_formed_escapes(raw) {
        return Err(QueryError::BadEndpoint);
    }
    scratch.extend(percent_decode(raw));
    if scratch.len() > MAX_ENDPOINT_BYTES
        || scratch.iter().any(|&b| b <= b' ' || b == 0x7f)
        || !(starts_with_ignore_case(scratch, b"http://")
            || starts_with_ignore_case(scratch, b"https://"))
    {
        return Err(QueryError::BadEndpoint);
    }
    std::str::from_utf8(scratch).map_err(|_| QueryError::BadEndpoint)
}

/// Every `%` starts a two-hex-digit escape (`percent_decode` would pass `%zz` through).
fn well_formed_escapes(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            match raw.get(i + 1..i + 3) {
                Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(q: &str) -> Result<i64, QueryError> {
        parse_accept(q.as_bytes()).map(|a| a.id)
    }

    #[test]
    fn id_accepts_the_whole_i64_range() {
        assert_eq!(id_of("id=0"), Ok(0));
        assert_eq!(id_of("id=-0"), Ok(0));
        assert_eq!(id_of("id=42"), Ok(42));
        assert_eq!(id_of("id=007"), Ok(7));
        assert_eq!(id_of("id=-17"), Ok(-17));
        assert_eq!(id_of("id=9223372036854775807"), Ok(i64::MAX));
        assert_eq!(id_of("id=-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(id_of("id=00000000000000000000000000001"), Ok(1));
    }

    #[test]
    fn id_rejects_out_of_range() {
        assert_eq!(id_of("id=9223372036854775808"), Err(QueryError::BadId));
        assert_eq!(id_of("id=-9223372036854775809"), Err(QueryError::BadId));
        assert_eq!(id_of("id=99999999999999999999999"), Err(QueryError::BadId));
    }

    #[test]
    fn id_rejects_anything_but_optional_minus_and_digits() {
        for bad in [
            "id=+5", "id=%2B5", "id=5%20", "id= 5", "id=5 ", "id=1.0", "id=1e3", "id=0x10", "id=-",
            "id=--1", "id=1-", "id=abc", "id=%31", "id=+", "id=١",
        ] {
            assert_eq!(id_of(bad), Err(QueryError::BadId), "{bad}");
        }
    }

    #[test]
    fn id_must_be_present_non_empty_and_unique() {
        assert_eq!(id_of(""), Err(QueryError::MissingId));
        assert_eq!(id_of("ID=5"), Err(QueryError::MissingId));
        assert_eq!(id_of("idx=5"), Err(QueryError::MissingId));
        assert_eq!(id_of("id="), Err(QueryError::EmptyId));
        assert_eq!(id_of("id"), Err(QueryError::EmptyId));
        assert_eq!(id_of("id=1&id=1"), Err(QueryError::RepeatedId));
        assert_eq!(id_of("id=1&x=2&id=3"), Err(QueryError::RepeatedId));
    }

    #[test]
    fn other_parameters_are_ignored() {
        assert_eq!(id_of("a=1&id=5&b&&c=%zz"), Ok(5));
        assert_eq!(id_of("&&id=5&"), Ok(5));
    }

    #[test]
    fn endpoint_is_borrowed_raw() {
        let a = parse_accept(b"id=1&endpoint=http%3A%2F%2Fx%2Fy").unwrap();
        assert_eq!(a.endpoint, Some(&b"http%3A%2F%2Fx%2Fy"[..]));
        assert_eq!(parse_accept(b"id=1").unwrap().endpoint, None);
        assert_eq!(
            parse_accept(b"id=1&endpoint=http://a&endpoint=http://b"),
            Err(QueryError::RepeatedEndpoint)
        );
        assert_eq!(
            parse_accept(b"id=1&endpoint="),
            Err(QueryError::BadEndpoint)
        );
        assert_eq!(parse_accept(b"id=1&endpoint"), Err(QueryError::BadEndpoint));
    }

    #[test]
    fn endpoint_is_percent_decoded_and_checked() {
        let mut scratch = Vec::new();
        assert_eq!(
            decode_endpoint(b"http%3A%2F%2Fexample.com%2Fhook%3Fa%3D1", &mut scratch),
            Ok("http://example.com/hook?a=1")
        );
        assert_eq!(
            decode_endpoint(b"HTTPS://example.com", &mut scratch),
            Ok("HTTPS://example.com")
        );
        for bad in [
            &b"ftp://example.com"[..],
            b"file:///etc/passwd",
            b"example.com",
            b"//example.com",
            b"http://exa%0Ample.com",
            b"http://example.com/%0D%0Aunique_count=5",
            b"http://example.com/a%20b",
            b"http://example.com/%FF",
            b"javascript:alert(1)",
            b"http://example.com/%zz",
            b"http://example.com/%4",
            b"http://example.com/%",
        ] {
            assert_eq!(
                decode_endpoint(bad, &mut scratch),
                Err(QueryError::BadEndpoint),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn endpoint_length_is_bounded_after_decoding() {
        let mut scratch = Vec::new();
        let ok = format!("http://e.com/{}", "a".repeat(MAX_ENDPOINT_BYTES - 13));
        assert_eq!(ok.len(), MAX_ENDPOINT_BYTES);
        assert!(decode_endpoint(ok.as_bytes(), &mut scratch).is_ok());
        let long = format!("{ok}a");
        assert_eq!(
            decode_endpoint(long.as_bytes(), &mut scratch),
            Err(QueryError::BadEndpoint)
        );
        // 2048 decoded bytes may take up to three times as many encoded ones.
        let encoded = format!("http://e.com/{}", "%61".repeat(MAX_ENDPOINT_BYTES - 13));
        let q = format!("id=1&endpoint={encoded}");
        let raw = parse_accept(q.as_bytes()).unwrap().endpoint.unwrap();
        assert!(decode_endpoint(raw, &mut scratch).is_ok());
        let q = format!("id=1&endpoint={}", "a".repeat(3 * MAX_ENDPOINT_BYTES + 1));
        assert_eq!(parse_accept(q.as_bytes()), Err(QueryError::BadEndpoint));
    }
}
