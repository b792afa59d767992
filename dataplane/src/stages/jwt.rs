//! JWT authorizers: a route that names one admits only requests with a valid bearer token.
//!
//! The order of checks is the point (docs/SECURITY.md):
//! 1. the token's header algorithm must be on the authorizer's allow-list, checked on the
//!    raw header before any signature work, so `alg: none` and unlisted algorithms cost
//!    nothing and never reach a verifier;
//! 2. only keys of that algorithm's family verify it: an HMAC algorithm is never tried with
//!    a public key (the classic confusion of RS256 public keys used as HS256 secrets);
//! 3. then `exp`, `nbf` (with the configured clock skew), `iss`, `aud`, required claims and
//!    finally the route's scopes (403 instead of 401).
//!
//! A bad token is 401 with `WWW-Authenticate: Bearer error="invalid_token"` and a reason in
//! the JSON body and the access log; the token itself is never logged. Chosen claims go to
//! the upstream as headers (a client-sent header of the same name is removed first) and all
//! claims stay in the exchange for later stages.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use super::{Exchange, Flow, Phases, Services, Stage, Step};
use crate::authorizers::AuthorizerContext;
use crate::authorizers::key_set::{KeySet, Keys};
use crate::integration::callee::Callee;
use crate::observe::trace::SpanKind;
use crate::rejection::{Rejection, ResponseType};

type Claims = serde_json::Map<String, serde_json::Value>;

/// Where an authorizer's keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// Keys written in the API definition (PEM, JWK, or an HMAC secret from the node's
    /// environment).
    Inline(Keys),
    /// A JWKS URL the node fetches, bound to the node's key set on first use.
    Jwks { callee: Arc<Callee>, refetch_interval: Duration, bound: OnceLock<Arc<KeySet>> },
}

/// One JWT authorizer of an API, as compiled for a revision.
#[derive(Debug)]
pub struct JwtPolicy {
    pub name: Arc<str>,
    pub keys: KeySource,
    /// Per allowed algorithm: issuer, audience, clock skew and the registered claims that
    /// must be present (the verifier takes one algorithm family at a time).
    pub validations: Vec<(Algorithm, Validation)>,
    /// Other claims that must be present.
    pub required_claims: Vec<String>,
    /// Claims passed upstream, each as a header.
    pub claim_headers: Vec<(String, HeaderName)>,
    /// Tokens verified in the last [`VERIFIED_FOR`], so that a client's next requests skip
    /// the signature (their `exp` and `nbf` are checked on every use).
    pub verified: moka::sync::Cache<Box<str>, Arc<VerifiedToken>>,
}

impl JwtPolicy {
    /// How tokens signed with `alg` are validated; `None` when `alg` is not allowed.
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// The authorizer on one route, with the scopes that route requires.
#[derive(Debug)]
pub struct JwtAuthorizer {
    pub policy: Arc<JwtPolicy>,
    pub scopes: Vec<String>,
}

/// Why a token was refused: what the client reads, and what the access log records.
fn invalid(description: &'static str) -> Rejection {
    metrics::counter!("meridian_authorizer_refusals_total", "kind" => "jwt", "reason" => description).increment(1);
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
    Rejection::new(StatusCode::UNAUTHORIZED, description)
        .with_reason(description)
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")))
}

/// The bearer token of a request.
fn bearer(head: &Parts) -> Result<&str, Rejection> {
    let missing = || {
        Rejection::new(StatusCode::UNAUTHORIZED, "this route needs a bearer token in Authorization")
            .with_reason("bearer token missing")
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    };
    let value = head.headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let text = value.to_str().map_err(|_| invalid("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(missing()),
    }
}

/// The `alg` and `kid` of a token's header, read without trusting anything else in it.
fn header_fields(token: &str) -> Result<(String, Option<String>), Rejection> {
    let malformed = || invalid("the token is not a JWS compact token");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
    let header: serde_json::Value = serde_json::from_slice(&json).map_err(|_| malformed())?;
    let alg = header.get("alg").and_then(|a| a.as_str()).ok_or_else(malformed)?;
    let kid = header.get("kid").and_then(|k| k.as_str()).map(str::to_string);
    Ok((alg.to_string(), kid))
}

impl JwtAuthorizer {
    /// Reads the token's header and checks its algorithm; the rest waits for the keys.
    fn prepare<'h>(&self, head: &'h Parts) -> Result<(&'h str, Algorithm, Option<String>), Rejection> {
        let token = bearer(head)?;
        let (alg, kid) = header_fields(token)?;
        let allowed = alg.parse::<Algorithm>().ok().filter(|a| self.policy.validation(*a).is_some());
        match allowed {
            Some(alg) => Ok((token, alg, kid)),
            None => Err(invalid("the token's algorithm is not allowed")),
        }
    }

    /// Verifies the token with `keys`, then its claims and the route's scopes, and passes
    /// the claims on.
    fn admit(
        &self,
        keys: &Keys,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        head: &mut Parts,
        exchange: &mut Exchange,
    ) -> Result<(), Rejection> {
        let claims = self.policy.verify(keys, token, alg, kid)?;
        self.pass(claims, head, exchange)
    }

    /// The route's scopes, then the claims on their way upstream and to later stages.
    fn pass(&self, claims: Arc<Claims>, head: &mut Parts, exchange: &mut Exchange) -> Result<(), Rejection> {
        let policy = &*self.policy;
        if !self.scopes.is_empty() {
            let granted = crate::authorizers::granted_scopes(&claims);
            if let Some(missing) = self.scopes.iter().find(|s| !granted.contains(&s.as_str())) {
                metrics::counter!("meridian_authorizer_refusals_total", "kind" => "jwt", "reason" => "insufficient scope")
                    .increment(1);
                let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", self.scopes.join(" "));
                return Err(Rejection::new(StatusCode::FORBIDDEN, format!("the token lacks the scope `{missing}`"))
                    .with_reason("insufficient scope")
                    .with_header(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
                    ));
            }
        }
        exchange.state.insert(AuthorizerContext::admit(&policy.name, claims, &policy.claim_headers, head));
        Ok(())
    }
}

/// A token this policy verified, kept so that its next uses skip the signature.
#[derive(Debug)]
pub struct VerifiedToken {
    claims: Arc<Claims>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl VerifiedToken {
    /// Whether the token is still within `exp` and past `nbf`, `leeway` seconds either way.
    fn current(&self, leeway: u64) -> bool {
        let now = jsonwebtoken::get_current_timestamp();
        self.exp.is_none_or(|exp| now <= exp.saturating_add(leeway)) && self.nbf.is_none_or(|nbf| nbf <= now + leeway)
    }
}

/// How many verified tokens a policy keeps, and for how long at most.
pub const VERIFIED_TOKENS: u64 = 10_000;
pub const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// Longer tokens are verified every time rather than kept.
const MAX_KEPT_TOKEN: usize = 4096;

impl JwtPolicy {
    fn leeway(&self) -> u64 {
        self.validations.first().map_or(0, |(_, v)| v.leeway)
    }

    /// The claims of `token` if this policy verified it lately and it is still current.
    fn kept(&self, token: &str) -> Option<Arc<Claims>> {
        self.verified.get(token).filter(|known| known.current(self.leeway())).map(|known| known.claims.clone())
    }

    /// A token verified by this policy, or why it is refused: from the cache of verified
    /// tokens while they are within their `exp` and `nbf`, else by signature and claims.
    fn verify(&self, keys: &Keys, token: &str, alg: Algorithm, kid: Option<&str>) -> Result<Arc<Claims>, Rejection> {
        if let Some(claims) = self.kept(token) {
            return Ok(claims);
        }
        let validation = self.validation(alg).ok_or_else(|| invalid("the token's algorithm is not allowed"))?;
        let mut claims = None;
        let mut last = invalid("no key matches the token's key id");
        for key in keys.candidates(kid, alg) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => {
                    last = refusal(e.kind());
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        let claims = claims.ok_or(last)?;
        if self.required_claims.iter().any(|c| !claims.contains_key(c)) {
            return Err(invalid("the token lacks a required claim"));
        }
        let number = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        let verified = Arc::new(VerifiedToken { exp: number("exp"), nbf: number("nbf"), claims: Arc::new(claims) });
        if token.len() <= MAX_KEPT_TOKEN {
            self.verified.insert(token.into(), verified.clone());
        }
        Ok(verified.claims.clone())
    }
}

/// What a verification failure tells the client.
fn refusal(kind: &ErrorKind) -> Rejection {
    if *kind == ErrorKind::ExpiredSignature {
        return invalid("the token has expired").of_type(ResponseType::ExpiredToken);
    }
    invalid(match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidAudience => "the token is not meant for this API",
        ErrorKind::InvalidIssuer => "the token's issuer is not trusted",
        ErrorKind::InvalidSignature => "the token's signature is not valid",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
        ErrorKind::InvalidClaimFormat(_) => "a claim of the token has the wrong type",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not allowed",
        _ => "the token is malformed",
    })
}

impl Stage for JwtAuthorizer {
    fn name(&self) -> &'static str {
        "jwt_authorizer"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD
    }

    fn request_head<'a>(
        &'a self,
        head: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        // A token this policy verified lately was signed with an allowed algorithm by a key
        // it trusts: only its times and the route's scopes are left to check.
        if let Some(claims) = bearer(head).ok().and_then(|token| self.policy.kept(token)) {
            return self.pass(claims, head, exchange).into();
        }
        let (token, alg, kid) = match self.prepare(head) {
            Ok((token, alg, kid)) => (token.to_string(), alg, kid),
            Err(rejection) => return rejection.into(),
        };
        match &self.policy.keys {
            KeySource::Inline(keys) => self.admit(keys, &token, alg, kid.as_deref(), head, exchange).into(),
            KeySource::Jwks { callee, refetch_interval, bound } => {
                let set = bound.get_or_init(|| services.authorizers.key_sets.bind(callee, *refetch_interval));
                let keys = set.keys();
                if keys.candidates(kid.as_deref(), alg).next().is_some() {
                    return self.admit(&keys, &token, alg, kid.as_deref(), head, exchange).into();
                }
                // A key the set does not hold (yet): fetch it again, at most once per
                // interval, and decide with what that brought.
                drop(keys);
                let span = exchange.start_span();
                Step::Waiting(Box::pin(async move {
                    set.refetch().await;
                    exchange.end_span(
                        span,
                        "authorizer key fetch",
                        SpanKind::Client,
                        || vec![("url.full", callee.uri().to_string().into())],
                        None,
                    );
                    Flow::from(self.admit(&set.keys(), &token, alg, kid.as_deref(), head, exchange))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_token_expires_like_any_other() {
        let now = jsonwebtoken::get_current_timestamp();
        let token = |exp: Option<u64>, nbf: Option<u64>| VerifiedToken { claims: Default::default(), exp, nbf };
        assert!(token(Some(now + 10), None).current(0));
        assert!(!token(Some(now - 10), None).current(5));
        assert!(token(Some(now - 10), None).current(30), "within the clock skew");
        assert!(!token(None, Some(now + 100)).current(30), "not valid yet");
        assert!(token(None, None).current(0));
    }
}
