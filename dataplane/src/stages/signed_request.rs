//! Signed requests: a route with `authorization: signed` admits only requests signed with
//! AWS Signature Version 4 by enabled credentials of the cluster, so SDK signers work
//! unchanged.
//!
//! The checks, in order: the request carries a signature (the `Authorization` header or a
//! presigned URL's query), its credential scope names this API's region and service, its
//! `X-Amz-Date` is within five minutes of the node's clock (a presigned URL: not yet expired,
//! `X-Amz-Expires` at most seven days), the access key is known and enabled, and the
//! signature is the one the key's secret makes of the request's canonical form. When the
//! signature covers the body (a payload hash rather than `UNSIGNED-PAYLOAD`), the body is
//! read, up to [`MAX_SIGNED_BODY`], and its hash checked too.
//!
//! Every refusal is 403 with what was wrong (a signer needs to know), never the secret or
//! the expected signature; a request without any signature is 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::WWW_AUTHENTICATE;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use ring::hmac;

use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step, may_have_body};
use crate::authorizers::AuthorizerContext;
use crate::digest::{constant_time_eq, sha256_hex};
use crate::rejection::{Rejection, ResponseType};
use crate::sigv4::{self, Claim, EMPTY_SHA256, Signed, UNSIGNED_PAYLOAD};

/// How far `X-Amz-Date` may be from the node's clock.
const WINDOW_SECONDS: u64 = 300;
/// The longest a presigned URL may be valid.
const MAX_EXPIRES: u64 = 7 * 24 * 3600;
/// The largest body whose hash a signature may cover.
pub const MAX_SIGNED_BODY: u64 = 10 * 1024 * 1024;

/// One set of credentials as the data plane holds it: the secret in clear, in memory only.
pub struct Credential {
    pub name: Arc<str>,
    pub secret: String,
    pub enabled: bool,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("name", &self.name).field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

/// The credentials of a configuration revision, by access key id.
#[derive(Debug, Default)]
pub struct Credentials {
    by_id: HashMap<String, Credential>,
}

impl Credentials {
    pub fn insert(&mut self, access_key_id: String, credential: Credential) {
        self.by_id.insert(access_key_id, credential);
    }

    pub fn get(&self, access_key_id: &str) -> Option<&Credential> {
        self.by_id.get(access_key_id)
    }
}

/// Requires a SigV4 signature with the API's region and service.
#[derive(Debug)]
pub struct SignedRequestCheck {
    pub region: String,
    pub service: String,
}

/// A signature whose check waits for the body.
struct AwaitingBody {
    claim: Claim,
    key: hmac::Key,
    caller: Arc<str>,
    /// The payload hash the request declared (`X-Amz-Content-Sha256`); `None` when the
    /// signature is over the body's own hash.
    declared: Option<String>,
}

fn refused(status: StatusCode, message: impl Into<std::borrow::Cow<'static, str>>, reason: &'static str) -> Rejection {
    metrics::counter!("meridian_authorizer_refusals_total", "kind" => "signed", "reason" => reason).increment(1);
    Rejection::new(status, message).with_reason(reason).of_type(ResponseType::InvalidSignature)
}

fn forbidden(message: impl Into<std::borrow::Cow<'static, str>>, reason: &'static str) -> Rejection {
    refused(StatusCode::FORBIDDEN, message, reason)
}

/// Whether a request may have a body (HTTP/1.1 says so in its head; HTTP/2 may not).
fn declared_hash(head: &Parts) -> Option<&str> {
    head.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SignedRequestCheck {
    /// Whether the signature `claim` makes of `head` with `payload_hash` is the one it
    /// carries (also without a session token added after signing).
    fn matches(&self, head: &Parts, claim: &Claim, key: &hmac::Key, payload_hash: &str) -> Result<bool, Rejection> {
        let request = Signed {
            method: head.method.as_str(),
            path: head.uri.path(),
            query: head.uri.query().unwrap_or(""),
            headers: &head.headers,
            authority: head.uri.authority().map(|a| a.as_str()),
        };
        let token_in_query = claim.presigned() && request.query.contains("X-Amz-Security-Token=");
        for token_signed in [true, false] {
            if !token_signed && !token_in_query {
                break;
            }
            let canonical = sigv4::canonical_request(&request, claim, payload_hash, true, token_signed)
                .map_err(|e| forbidden(e.to_string(), "signature malformed"))?;
            let made = sigv4::signature(key, &sigv4::string_to_sign(claim, &canonical));
            if constant_time_eq(made.as_bytes(), claim.signature.as_bytes()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Everything that can be checked from the head.
    fn check_head(&self, head: &Parts, services: &Services<'_>) -> Result<Verdict, Rejection> {
        let claim = match Claim::of(&head.headers, head.uri.query().unwrap_or("")) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                return Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "this route needs a request signed with AWS Signature Version 4",
                    "signature missing",
                )
                .of_type(ResponseType::MissingAuthenticationToken)
                .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("AWS4-HMAC-SHA256")));
            }
            Err(e) => return Err(forbidden(e.to_string(), "signature malformed")),
        };
        if claim.region != self.region || claim.service != self.service {
            return Err(forbidden(
                format!("the credential scope must name region `{}` and service `{}`", self.region, self.service),
                "signature scope",
            ));
        }
        let signed_at = sigv4::timestamp_seconds(&claim.timestamp)
            .ok_or_else(|| forbidden("X-Amz-Date is not a date", "signature malformed"))?;
        let now = now();
        match claim.expires {
            None if signed_at.abs_diff(now) > WINDOW_SECONDS => {
                return Err(forbidden(
                    "X-Amz-Date is more than 5 minutes from the gateway's clock",
                    "signature outside its time window",
                ));
            }
            Some(expires) if expires == 0 || expires > MAX_EXPIRES => {
                return Err(forbidden("X-Amz-Expires must be from 1 to 604800 seconds", "signature malformed"));
            }
            Some(expires) if signed_at > now + WINDOW_SECONDS || now > signed_at + expires => {
                return Err(forbidden("the presigned URL has expired", "signature outside its time window"));
            }
            _ => {}
        }
        let credential = match services.credentials.get(&claim.access_key_id) {
            Some(c) if c.enabled => c,
            Some(_) => return Err(forbidden("the access key is not valid", "access key disabled")),
            None => return Err(forbidden("the access key is not valid", "access key unknown")),
        };
        let key = sigv4::signing_key(&credential.secret, &claim.date, &claim.region, &claim.service);
        let body = may_have_body(head);
        let awaiting = |declared: Option<&str>| AwaitingBody {
            claim: claim.clone(),
            key: key.clone(),
            caller: credential.name.clone(),
            declared: declared.map(str::to_string),
        };
        let verified = match declared_hash(head) {
            Some(UNSIGNED_PAYLOAD) => self.matches(head, &claim, &key, UNSIGNED_PAYLOAD)?,
            Some(hash) => {
                let ok = self.matches(head, &claim, &key, hash)?;
                if ok && body {
                    // The signature covers this hash: the body must have it.
                    return Ok(Verdict::AwaitingBody(Arc::new(awaiting(Some(hash)))));
                }
                ok && (body || hash == EMPTY_SHA256)
            }
            None if claim.presigned() => {
                self.matches(head, &claim, &key, UNSIGNED_PAYLOAD)?
                    || (!body && self.matches(head, &claim, &key, EMPTY_SHA256)?)
            }
            None if body => return Ok(Verdict::AwaitingBody(Arc::new(awaiting(None)))),
            None => self.matches(head, &claim, &key, EMPTY_SHA256)?,
        };
        if !verified {
            return Err(forbidden(
                "the request signature does not match the one its access key makes",
                "signature mismatch",
            ));
        }
        Ok(Verdict::Admitted { access_key_id: claim.access_key_id, caller: credential.name.clone() })
    }
}

/// What the head's check decided.
enum Verdict {
    Admitted { access_key_id: String, caller: Arc<str> },
    AwaitingBody(Arc<AwaitingBody>),
}

fn admitted(exchange: &mut Exchange, access_key_id: &str, caller: Arc<str>) {
    let mut values = serde_json::Map::new();
    values.insert("accessKey".into(), access_key_id.into());
    values.insert("caller".into(), caller.as_ref().into());
    exchange.state.insert(AuthorizerContext { authorizer: Arc::from("signed"), values: Arc::new(values) });
}

impl Stage for SignedRequestCheck {
    fn name(&self) -> &'static str {
        "signed_request"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD | Phases::REQUEST_BODY
    }

    fn request_head<'a>(
        &'a self,
        head: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        match self.check_head(head, services) {
            Ok(Verdict::Admitted { access_key_id, caller }) => {
                admitted(exchange, &access_key_id, caller);
                Flow::Continue.into()
            }
            Ok(Verdict::AwaitingBody(awaiting)) => {
                exchange.state.insert(awaiting);
                Flow::Continue.into()
            }
            Err(rejection) => rejection.into(),
        }
    }

    fn body_need(&self, head: &Parts) -> Option<BodyNeed> {
        let signed_body = match declared_hash(head) {
            Some(UNSIGNED_PAYLOAD) => false,
            Some(_) => true,
            None => !head.uri.query().unwrap_or("").contains("X-Amz-Signature="),
        };
        (signed_body && may_have_body(head)).then_some(BodyNeed::Whole(MAX_SIGNED_BODY))
    }

    fn request_body<'a>(
        &'a self,
        head: &'a Parts,
        body: &'a Bytes,
        exchange: &'a mut Exchange,
        _: &'a Services<'a>,
    ) -> Step<'a> {
        let Some(awaiting) = exchange.state.remove::<Arc<AwaitingBody>>() else {
            // Verified from the head already.
            return Flow::Continue.into();
        };
        let hash = sha256_hex(exchange.body_as_sent(body));
        let verified = match &awaiting.declared {
            Some(declared) => {
                if !constant_time_eq(declared.as_bytes(), hash.as_bytes()) {
                    return forbidden("the body does not match X-Amz-Content-Sha256", "payload hash mismatch").into();
                }
                true
            }
            None => match self.matches(head, &awaiting.claim, &awaiting.key, &hash) {
                Ok(ok) => ok,
                Err(rejection) => return rejection.into(),
            },
        };
        if !verified {
            return forbidden(
                "the request signature does not match the one its access key makes",
                "signature mismatch",
            )
            .into();
        }
        admitted(exchange, &awaiting.claim.access_key_id, awaiting.caller.clone());
        Flow::Continue.into()
    }
}
