//! The `query` target: `parse_accept`, `parse_id`, `decode_endpoint` and `canonicalize`
//! against independent models of the documented rules.

use verve::endpoints::canonicalize;
use verve::query::{decode_endpoint, parse_accept, parse_id, QueryError, MAX_ENDPOINT_BYTES};

use super::model::{check_canonical, decimal, Policy};

/// Feeds arbitrary bytes to the query validator: `parse_accept` against an independent
/// model of the documented rules, `parse_id`, and every endpoint (the one `parse_accept`
/// returns, and the whole input) through `decode_endpoint` and `canonicalize` with both
/// policies.
pub fn check_query(data: &[u8]) -> Result<(), String> {
    let got = parse_accept(data);
    let want = model_parse_accept(data);
    ensure!(
        got.map(|a| (a.id, a.endpoint)) == want,
        "parse_accept = {got:?}, the documented rules say {want:?}"
    );
    if let Ok(accept) = got {
        // The id's decimal form is the raw value without a redundant sign and leading zeros.
        let raw = raw_value(data, b"id").ok_or("accepted without an id pair")?;
        ensure!(
            normalize_decimal(raw).as_deref() == Some(accept.id.to_string().as_bytes()),
            "id {} from {:?}",
            accept.id,
            String::from_utf8_lossy(raw)
        );
        if let Some(endpoint) = accept.endpoint {
            ensure!(
                is_subslice(data, endpoint),
                "the endpoint does not borrow from the query"
            );
            check_endpoint(endpoint)?;
        }
    }
    // `parse_id` on its own, on the whole input.
    let id = parse_id(data);
    let want = model_id(data);
    ensure!(id == want, "parse_id = {id:?}, expected {want:?}");
    // Any bytes as a raw endpoint.
    check_endpoint(data)
}

/// `decode_endpoint`, then `canonicalize` with both policies.
fn check_endpoint(raw: &[u8]) -> Result<(), String> {
    let mut scratch = b"left over from an earlier request".to_vec();
    let got = decode_endpoint(raw, &mut scratch).map(str::to_owned);
    let want = model_decode(raw);
    ensure!(
        got.as_ref().ok().map(String::as_bytes) == want.as_deref(),
        "decode_endpoint({:?}) = {got:?}, expected {:?}",
        String::from_utf8_lossy(raw),
        want.map(|w| String::from_utf8_lossy(&w).into_owned())
    );
    let Ok(decoded) = got else {
        return Ok(());
    };
    ensure!(
        decoded.len() <= MAX_ENDPOINT_BYTES,
        "decoded endpoint of {} bytes",
        decoded.len()
    );
    for policy in [Policy::Default, Policy::AllowList] {
        let built = policy.build();
        if let Ok(url) = canonicalize(&decoded, &built) {
            check_canonical(url.as_str(), policy)
                .map_err(|m| format!("{decoded:?} -> {:?}: {m}", url.as_str()))?;
            // The canonical form is a fixed point: it is what makes two endpoints the same.
            let again = canonicalize(url.as_str(), &built)
                .map_err(|e| format!("canonical {:?} refused: {e}", url.as_str()))?;
            ensure!(
                again.as_str() == url.as_str(),
                "canonical {:?} re-canonicalizes to {:?}",
                url.as_str(),
                again.as_str()
            );
        }
    }
    Ok(())
}

/// The query rules of the README's *API* section, written independently of `parse_accept`:
/// pairs split on `&`, name and value on the first `=`, names matched exactly; a repeated
/// `id` or `endpoint` is refused as soon as it is seen (left to right); then `id` must be
/// present, non-empty and `-?[0-9]+` within `i64`; an `endpoint`, when given, must be
/// non-empty and at most three encoded bytes per allowed decoded byte.
fn model_parse_accept(q: &[u8]) -> Result<(i64, Option<&[u8]>), QueryError> {
    let pairs: Vec<(&[u8], &[u8])> = q
        .split(|&b| b == b'&')
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &[][..]),
        })
        .collect();
    let second = |name: &[u8]| {
        pairs
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n == name)
            .nth(1)
            .map(|(i, _)| i)
    };
    match (second(b"id"), second(b"endpoint")) {
        (Some(i), Some(e)) if e < i => return Err(QueryError::RepeatedEndpoint),
        (Some(_), _) => return Err(QueryError::RepeatedId),
        (None, Some(_)) => return Err(QueryError::RepeatedEndpoint),
        (None, None) => {}
    }
    let value = |name: &[u8]| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let id = match value(b"id") {
        None => return Err(QueryError::MissingId),
        Some([]) => return Err(QueryError::EmptyId),
        Some(raw) => model_id(raw).ok_or(QueryError::BadId)?,
    };
    let endpoint = value(b"endpoint");
    if endpoint.is_some_and(|e| e.is_empty() || e.len() > 3 * MAX_ENDPOINT_BYTES) {
        return Err(QueryError::BadEndpoint);
    }
    Ok((id, endpoint))
}

/// `-?[0-9]+` within `i64`, through `i128`.
fn model_id(raw: &[u8]) -> Option<i64> {
    let (neg, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, raw),
    };
    let n = decimal(digits)?;
    i64::try_from(if neg { -n } else { n }).ok()
}

/// The value of the first `name=` pair.
fn raw_value<'q>(q: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    q.split(|&b| b == b'&').find_map(|p| {
        let (n, v) = match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &[][..]),
        };
        (n == name).then_some(v)
    })
}

/// `-?0*D` becomes `D` with its sign (`0` for zero, no `-0`).
fn normalize_decimal(raw: &[u8]) -> Option<Vec<u8>> {
    let (neg, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().take_while(|&&d| d == b'0').count()..];
    if significant.is_empty() {
        return Some(b"0".to_vec());
    }
    let mut v = if neg { b"-".to_vec() } else { Vec::new() };
    v.extend_from_slice(significant);
    Some(v)
}

fn is_subslice(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// The documented endpoint rules, independently: every `%` starts two hex digits; decoded,
/// at most 2048 bytes, UTF-8, no byte <= space and no DEL, and an `http://` or `https://`
/// prefix in any case.
fn model_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = hex(*raw.get(i + 1)?)?;
            let lo = hex(*raw.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    let lower: Vec<u8> = out.iter().take(8).map(u8::to_ascii_lowercase).collect();
    let ok = out.len() <= MAX_ENDPOINT_BYTES
        && out.iter().all(|&b| b > b' ' && b != 0x7f)
        && (lower.starts_with(b"http://") || lower.starts_with(b"https://"))
        && std::str::from_utf8(&out).is_ok();
    ok.then_some(out)
}
