//! AWS Signature Version 4, from the verifier's side: what a signed request claims
//! ([`Claim`], from the `Authorization` header or a presigned URL's query), its canonical
//! request, the string to sign and the signature a secret makes of it.
//!
//! This module is pure: no clock, no secrets store, no HTTP. The signed-request stage
//! (`stages/signed_request.rs`) decides what to check against what; the public AWS test
//! suites check this module's canonical request, string to sign and signature
//! (`dataplane/tests/sigv4_conformance.rs`).
//!
//! The canonical URI follows the rule for services other than S3, which is what SDK signers
//! apply to an API: the path as sent is normalized (empty and dot segments removed) and each
//! byte outside the unreserved set is percent-encoded again, so `/a%20b` signs as
//! `/a%2520b`.
//!
//! ```
//! use meridian_dataplane::sigv4::{signature, signing_key};
//! let key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam");
//! let sts = "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
//!            f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59";
//! assert_eq!(signature(&key, sts), "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
//! ```

use http::HeaderMap;
use ring::hmac;

use crate::digest::hex;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash a signer sends when it does not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// The SHA-256 of nothing, the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What is wrong with a signed request's form (not its signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the Authorization header is not `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`")]
    MalformedHeader,
    #[error("the presigned URL lacks `{0}`")]
    MissingQueryParameter(&'static str),
    #[error("the credential is not `KEY/DATE/REGION/SERVICE/aws4_request`")]
    MalformedCredential,
    #[error("the date is not `YYYYMMDDTHHMMSSZ`")]
    MalformedDate,
    #[error("SignedHeaders must list lower-case header names, sorted, including `host`")]
    MalformedSignedHeaders,
    #[error("the signed header `{0}` is not in the request")]
    MissingSignedHeader(String),
}

/// What a signed request says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// `X-Amz-Date`: `YYYYMMDDTHHMMSSZ`.
    pub timestamp: String,
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
    /// For a presigned URL: `X-Amz-Expires`, in seconds.
    pub expires: Option<u64>,
}

impl Claim {
    pub fn presigned(&self) -> bool {
        self.expires.is_some()
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }

    /// The claim of a request: from its `Authorization` header, or from its query string
    /// when it is a presigned URL; `None` when it is not signed at all.
    pub fn of(headers: &HeaderMap, query: &str) -> Result<Option<Claim>, SigError> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let text = value.to_str().map_err(|_| SigError::MalformedHeader)?;
            if let Some(rest) = text.strip_prefix(ALGORITHM) {
                let timestamp = header_text(headers, "x-amz-date").ok_or(SigError::MalformedDate)?;
                return Claim::from_header(rest, timestamp).map(Some);
            }
            return Ok(None);
        }
        if query.split('&').any(|p| p.starts_with("X-Amz-Signature=")) {
            return Claim::from_query(query).map(Some);
        }
        Ok(None)
    }

    fn from_header(rest: &str, timestamp: &str) -> Result<Claim, SigError> {
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (name, value) = part.trim().split_once('=').ok_or(SigError::MalformedHeader)?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(SigError::MalformedHeader),
            };
            if slot.replace(value).is_some() {
                return Err(SigError::MalformedHeader);
            }
        }
        let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
            return Err(SigError::MalformedHeader);
        };
        Claim::build(credential, signed, signature, timestamp, None)
    }

    fn from_query(query: &str) -> Result<Claim, SigError> {
        let value = |name: &'static str| {
            crate::query::pairs(query)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
                .ok_or(SigError::MissingQueryParameter(name))
        };
        if value("X-Amz-Algorithm")? != ALGORITHM {
            return Err(SigError::MissingQueryParameter("X-Amz-Algorithm"));
        }
        let expires = value("X-Amz-Expires")?.parse().map_err(|_| SigError::MissingQueryParameter("X-Amz-Expires"))?;
        Claim::build(
            &value("X-Amz-Credential")?,
            &value("X-Amz-SignedHeaders")?,
            &value("X-Amz-Signature")?,
            &value("X-Amz-Date")?,
            Some(expires),
        )
    }

    fn build(
        credential: &str,
        signed: &str,
        signature: &str,
        timestamp: &str,
        expires: Option<u64>,
    ) -> Result<Claim, SigError> {
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = parts.as_slice() else {
            return Err(SigError::MalformedCredential);
        };
        if access_key_id.is_empty() || region.is_empty() || service.is_empty() {
            return Err(SigError::MalformedCredential);
        }
        if !valid_timestamp(timestamp) || !timestamp.starts_with(date) || date.len() != 8 {
            return Err(SigError::MalformedDate);
        }
        let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
        let well_formed = signed_headers.iter().all(|h| !h.is_empty() && !h.bytes().any(|b| b.is_ascii_uppercase()))
            && signed_headers.windows(2).all(|w| w[0] < w[1])
            && signed_headers.iter().any(|h| h == "host");
        if !well_formed {
            return Err(SigError::MalformedSignedHeaders);
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SigError::MalformedHeader);
        }
        Ok(Claim {
            access_key_id: access_key_id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            timestamp: timestamp.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
            expires,
        })
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn valid_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..15].iter().all(u8::is_ascii_digit)
}

/// Seconds since the Unix epoch of a `YYYYMMDDTHHMMSSZ` timestamp.
pub fn timestamp_seconds(t: &str) -> Option<u64> {
    if !valid_timestamp(t) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t[r].parse::<u64>().ok();
    let (year, month, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hour, minute, second) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Percent-encodes every byte outside `A-Z a-z 0-9 - _ . ~` (and `/` when `keep_slash`).
fn encode(bytes: &[u8], keep_slash: bool, out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The canonical URI of `path` as sent: normalized (`normalize`: empty and dot segments
/// removed, a trailing slash kept), then encoded.
pub fn canonical_uri(path: &str, normalize: bool) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let normalized = if normalize {
        let mut segments: Vec<&str> = Vec::new();
        for segment in path.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let mut p = format!("/{}", segments.join("/"));
        let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
        if trailing && p.len() > 1 {
            p.push('/');
        }
        p
    } else {
        path.to_string()
    };
    let mut out = String::with_capacity(normalized.len() + 8);
    encode(normalized.as_bytes(), true, &mut out);
    out
}

/// The canonical query string: every parameter but `X-Amz-Signature` (and
/// `X-Amz-Security-Token` unless `token_signed`: some signers add it after signing), name
/// and value decoded and encoded again, sorted by name then value.
pub fn canonical_query(query: &str, token_signed: bool) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) =
                (crate::query::percent_decode_bytes(k.as_bytes()), crate::query::percent_decode_bytes(v.as_bytes()));
            if k == b"X-Amz-Signature" || (!token_signed && k == b"X-Amz-Security-Token") {
                return None;
            }
            let (mut ek, mut ev) = (String::new(), String::new());
            encode(&k, false, &mut ek);
            encode(&v, false, &mut ev);
            Some((ek, ev))
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// A header's values as signed: each trimmed, runs of spaces made one, joined by commas.
fn canonical_header_value(headers: &HeaderMap, name: &str, host: Option<&str>) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        // HTTP/2 carries the host as `:authority`, which the caller passes.
        return if name == "host" { host.map(str::to_string) } else { None };
    }
    let mut out = String::new();
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        let mut first = true;
        for word in text.split_ascii_whitespace() {
            if !first {
                out.push(' ');
            }
            out.push_str(word);
            first = false;
        }
    }
    Some(out)
}

/// The parts of a request its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'r> {
    pub method: &'r str,
    /// The path as sent, before any decoding.
    pub path: &'r str,
    /// The query as sent.
    pub query: &'r str,
    pub headers: &'r HeaderMap,
    /// The authority when there is no `Host` header (HTTP/2).
    pub authority: Option<&'r str>,
}

/// The canonical request of `request` under `claim`, with `payload_hash`.
pub fn canonical_request(
    request: &Signed<'_>,
    claim: &Claim,
    payload_hash: &str,
    normalize: bool,
    token_signed: bool,
) -> Result<String, SigError> {
    let mut out = String::with_capacity(256);
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_uri(request.path, normalize));
    out.push('\n');
    out.push_str(&canonical_query(request.query, token_signed));
    out.push('\n');
    for name in &claim.signed_headers {
        let value = canonical_header_value(request.headers, name, request.authority)
            .ok_or_else(|| SigError::MissingSignedHeader(name.clone()))?;
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&claim.signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The string to sign for a canonical request.
pub fn string_to_sign(claim: &Claim, canonical_request: &str) -> String {
    let hash = crate::digest::sha256_hex(canonical_request.as_bytes());
    format!("{ALGORITHM}\n{}\n{}\n{hash}", claim.timestamp, claim.scope())
}

/// The key a secret derives for one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// The signature (lower-case hex) of `string_to_sign`.
pub fn signature(key: &hmac::Key, string_to_sign: &str) -> String {
    hex(hmac::sign(key, string_to_sign.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_to_unix_seconds() {
        assert_eq!(timestamp_seconds("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(timestamp_seconds("19700101T000000Z"), Some(0));
        assert_eq!(timestamp_seconds("20150830T123600"), None);
        assert_eq!(timestamp_seconds("20151330T123600Z"), None);
    }

    #[test]
    fn malformed_authorization_headers_are_refused_not_panicked_on() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        for bad in [
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=x-amz-date, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150831/r/s/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/other, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=x;host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 ,,,===",
        ] {
            headers.insert(http::header::AUTHORIZATION, bad.parse().unwrap());
            assert!(Claim::of(&headers, "").is_err(), "{bad}");
        }
        headers.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(Claim::of(&headers, ""), Ok(None));
    }
}
