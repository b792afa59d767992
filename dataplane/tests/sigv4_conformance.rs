//! The SigV4 verifier against the public AWS Signature Version 4 test suites in
//! `../shared/conformance/sigv4/` (read from there, never copied): for every signed request
//! of awslabs' suite (header and presigned forms) and botocore's, the canonical request, the
//! string to sign and the signature must be the published ones, and the signature the
//! request carries must be the one its secret makes.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};
use meridian_dataplane::sigv4::{Claim, Signed, canonical_request, signature, signing_key, string_to_sign};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn suites() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/sigv4");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: the SigV4 test suites are not at {}", dir.display());
        None
    }
}

/// A request as the suites write it: `METHOD URI HTTP/1.1`, headers (a line starting with
/// white space continues the one before), a blank line, the body.
struct RawRequest {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn parse(text: &str) -> RawRequest {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let first = lines.next().expect("a request line");
    let (method, rest) = first.split_once(' ').expect("METHOD URI");
    let uri = rest.rsplit_once(" HTTP/").map_or(rest, |(u, _)| u);
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().expect("a continuation follows a header");
            last.1.push(' ');
            last.1.push_str(line.trim());
        } else {
            let (name, value) = line.split_once(':').expect("Name:value");
            // Like an HTTP parser, without the white space around the value.
            fields.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    RawRequest {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// Checks one signed request against its expected canonical request, string to sign and
/// signature.
fn check(
    name: &str,
    signed: &str,
    creq: &str,
    sts: &str,
    expected_signature: &str,
    normalize: bool,
    token_signed: bool,
) {
    let request = parse(signed);
    let claim = Claim::of(&request.headers, &request.query)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name}: not signed"));
    let payload = match request.headers.get("x-amz-content-sha256") {
        Some(v) => v.to_str().unwrap().to_string(),
        None => meridian_dataplane::digest::sha256_hex(&request.body),
    };
    let parts = Signed {
        method: &request.method,
        path: &request.path,
        query: &request.query,
        headers: &request.headers,
        authority: None,
    };
    let canonical =
        canonical_request(&parts, &claim, &payload, normalize, token_signed).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(canonical, creq.trim_end_matches('\n'), "{name}: canonical request");
    let to_sign = string_to_sign(&claim, &canonical);
    assert_eq!(to_sign, sts.trim_end_matches('\n'), "{name}: string to sign");
    let key = signing_key(SECRET, &claim.date, &claim.region, &claim.service);
    let made = signature(&key, &to_sign);
    assert_eq!(made, expected_signature.trim(), "{name}: signature");
    assert_eq!(made, claim.signature, "{name}: the request carries the signature its secret makes");
}

#[test]
fn awslabs_signing_suite_header_and_presigned_forms() {
    let Some(dir) = suites() else { return };
    let mut checked = 0;
    let mut cases: Vec<_> = std::fs::read_dir(dir.join("aws-signing-test-suite-v4")).unwrap().flatten().collect();
    cases.sort_by_key(|e| e.path());
    for case in cases {
        let path = case.path();
        if !path.join("context.json").is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let context: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("context.json")).unwrap()).unwrap();
        assert_eq!(context["credentials"]["secret_access_key"], SECRET, "{name}");
        let normalize = context["normalize"].as_bool().unwrap_or(true);
        // A session token added after signing (some services' rule) is not in the signature.
        let token_signed = !context["omit_session_token"].as_bool().unwrap_or(false);
        let read = |file: &str| std::fs::read_to_string(path.join(file)).unwrap();
        for form in ["header", "query"] {
            if !path.join(format!("{form}-signed-request.txt")).is_file() {
                continue;
            }
            check(
                &format!("{name} ({form})"),
                &read(&format!("{form}-signed-request.txt")),
                &read(&format!("{form}-canonical-request.txt")),
                &read(&format!("{form}-string-to-sign.txt")),
                &read(&format!("{form}-signature.txt")),
                normalize,
                token_signed,
            );
            checked += 1;
        }
    }
    assert!(checked >= 70, "only {checked} cases were found");
}

#[test]
fn botocore_suite() {
    let Some(dir) = suites() else { return };
    let mut stack = vec![dir.join("aws4_testsuite")];
    let mut checked = 0;
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "sreq") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let sibling = |ext: &str| std::fs::read_to_string(path.with_extension(ext)).unwrap();
            let authz = sibling("authz");
            let expected = authz.rsplit("Signature=").next().unwrap();
            // The `.authz` file is the suite's answer; one `.sreq`
            // (get-vanilla-with-session-token) carries a stale header, so the signed request
            // is the `.sreq` with the `.authz` header.
            let signed: Vec<String> = sibling("sreq")
                .lines()
                .map(|l| {
                    if l.starts_with("Authorization:") {
                        format!("Authorization:{}", authz.trim())
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            check(&name, &signed.join("\n"), &sibling("creq"), &sibling("sts"), expected, true, true);
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} cases were found");
}
