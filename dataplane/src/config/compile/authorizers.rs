//! Compiling authorizers: `jwt` (algorithms, keys inline or from a JWKS URL, issuer,
//! audience, clock skew, required claims, claims to headers) and `custom` (URL, identity
//! sources, cache, timeout, context to headers), each field checked with its line. A
//! custom authorizer's identity sources may name stage variables, so it becomes a stage
//! per API stage; a JWT policy is shared by every route and stage of its API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_saphyr::Location;

use super::super::model::*;
use super::super::parse_duration;
use super::Compiler;
use crate::authorizers::key_set::{Keys, VerifyingKey};
use crate::integration::callee::Callee;
use crate::stages::Stage;
use crate::stages::custom_authorizer::{CustomAuthorizer, IdentitySource};
use crate::stages::jwt::{JwtAuthorizer, JwtPolicy, KeySource, VERIFIED_FOR, VERIFIED_TOKENS};

const DEFAULT_REFETCH: Duration = Duration::from_secs(30);
const DEFAULT_SKEW: Duration = Duration::from_secs(30);
const DEFAULT_TTL: Duration = Duration::from_secs(300);
const DEFAULT_CALLOUT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CACHE_SIZE: u64 = 10_000;

/// An authorizer as compiled once per API.
pub(super) enum AuthorizerSpec {
    Jwt(Arc<JwtPolicy>),
    Custom(CustomSpec),
}

/// A custom authorizer before its stage variables are known.
pub(super) struct CustomSpec {
    name: Arc<str>,
    callee: Arc<Callee>,
    sources: Vec<String>,
    sources_at: Location,
    field: String,
    ttl: Duration,
    cache_size: u64,
    context_headers: Vec<(String, HeaderName)>,
}

/// What a route (or stage) asks of an authorizer: its name, with the line that names it.
pub(super) struct AuthorizerUse<'d> {
    pub name: &'d Spanned<String>,
    pub field: String,
}

fn jwt_algorithm(name: &str) -> Option<Algorithm> {
    // `none` and anything unknown are not algorithms here.
    name.parse::<Algorithm>().ok()
}

impl Compiler<'_> {
    /// The API's authorizers by name.
    pub(super) fn authorizers(&mut self, api: &ApiDef, field: &str) -> HashMap<String, AuthorizerSpec> {
        let mut out = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, def) in api.authorizers.iter().enumerate() {
            let afield = format!("{field}.authorizers[{i}]");
            if !self.name(&def.name, &format!("{afield}.name"), "authorizer name") {
                continue;
            }
            let label: Arc<str> = Arc::from(format!("{}/{}", api.id.value, def.name.value));
            let spec = match def.kind.value {
                AuthorizerKind::Jwt => self.jwt(def, &afield, label).map(|p| AuthorizerSpec::Jwt(Arc::new(p))),
                AuthorizerKind::Custom => self.custom(def, &afield, label).map(AuthorizerSpec::Custom),
            };
            if !names.insert(def.name.value.as_str()) {
                self.sink.push(
                    def.name.referenced,
                    format!("{afield}.name"),
                    format!("authorizer `{}` is declared twice", def.name.value),
                );
                continue;
            }
            if let Some(spec) = spec {
                out.insert(def.name.value.clone(), spec);
            }
        }
        out
    }

    /// Fields that belong to the other kind of authorizer are errors.
    fn misplaced(&mut self, def: &AuthorizerDef, field: &str) {
        let (kind, fields): (&str, Vec<(bool, Location, &str)>) = match def.kind.value {
            AuthorizerKind::Jwt => (
                "jwt",
                vec![
                    (def.uri.is_some(), at(&def.uri), "uri"),
                    (def.identity_sources.is_some(), at(&def.identity_sources), "identity_sources"),
                    (def.ttl.is_some(), at(&def.ttl), "ttl"),
                    (def.cache_size.is_some(), at(&def.cache_size), "cache_size"),
                    (def.timeout.is_some(), at(&def.timeout), "timeout"),
                    (def.context_to_headers.is_some(), at(&def.context_to_headers), "context_to_headers"),
                ],
            ),
            AuthorizerKind::Custom => (
                "custom",
                vec![
                    (def.algorithms.is_some(), at(&def.algorithms), "algorithms"),
                    (def.jwks_uri.is_some(), at(&def.jwks_uri), "jwks_uri"),
                    (def.jwks_refetch_interval.is_some(), at(&def.jwks_refetch_interval), "jwks_refetch_interval"),
                    (def.keys.is_some(), at(&def.keys), "keys"),
                    (def.issuer.is_some(), at(&def.issuer), "issuer"),
                    (def.audience.is_some(), at(&def.audience), "audience"),
                    (def.clock_skew.is_some(), at(&def.clock_skew), "clock_skew"),
                    (def.required_claims.is_some(), at(&def.required_claims), "required_claims"),
                    (def.claims_to_headers.is_some(), at(&def.claims_to_headers), "claims_to_headers"),
                ],
            ),
        };
        for (present, location, name) in fields {
            if present {
                self.sink.push(
                    location,
                    format!("{field}.{name}"),
                    format!("`{name}` does not apply to a `{kind}` authorizer"),
                );
            }
        }
    }

    fn jwt(&mut self, def: &AuthorizerDef, field: &str, name: Arc<str>) -> Option<JwtPolicy> {
        self.misplaced(def, field);
        let mut ok = true;
        let algorithms: Vec<Algorithm> = match &def.algorithms {
            None => {
                self.sink.push(
                    def.kind.referenced,
                    format!("{field}.algorithms"),
                    "a `jwt` authorizer needs `algorithms`, e.g. `[RS256]`",
                );
                return None;
            }
            Some(list) => {
                let mut algorithms = Vec::new();
                for a in &list.value {
                    match jwt_algorithm(a) {
                        Some(alg) => algorithms.push(alg),
                        None => {
                            self.sink.push(
                                list.referenced,
                                format!("{field}.algorithms"),
                                format!(
                                    "`{a}` is not an algorithm tokens may use: choose from RS256, RS384, RS512, \
                                     PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512"
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                if algorithms.is_empty() && ok {
                    self.sink.push(list.referenced, format!("{field}.algorithms"), "name at least one algorithm");
                    ok = false;
                }
                algorithms
            }
        };
        let tls = self.trust(def.ca_file.as_ref(), field, def.kind.referenced);
        let inline = def.keys.as_ref().map(|keys| self.inline_keys(keys, field));
        let keys = match (&def.jwks_uri, inline) {
            (None, None) => {
                self.sink.push(
                    def.kind.referenced,
                    format!("{field}.jwks_uri"),
                    "a `jwt` authorizer needs `jwks_uri` or `keys`",
                );
                return None;
            }
            (Some(uri), Some(_)) => {
                self.sink.push(uri.referenced, format!("{field}.keys"), "give `jwks_uri` or `keys`, not both");
                return None;
            }
            (None, Some(keys)) => KeySource::Inline(keys?),
            (Some(uri), None) => {
                let refetch_interval = match &def.jwks_refetch_interval {
                    None => DEFAULT_REFETCH,
                    Some(d) => self.bounded_duration(
                        d,
                        &format!("{field}.jwks_refetch_interval"),
                        Duration::from_secs(1),
                        Duration::from_secs(3600),
                    )?,
                };
                let callee = match Callee::new(&uri.value, Duration::from_secs(10), tls?) {
                    Ok(c) if uri.value.starts_with("http://") || uri.value.starts_with("https://") => c,
                    Ok(_) | Err(_) => {
                        self.sink.push(
                            uri.referenced,
                            format!("{field}.jwks_uri"),
                            format!("`{}` is not an http(s) URL", uri.value),
                        );
                        return None;
                    }
                };
                KeySource::Jwks { callee: Arc::new(callee), refetch_interval, bound: OnceLock::new() }
            }
        };
        // Every algorithm needs a key family to verify it, and no key may be of a family
        // the algorithms do not use (an HMAC secret beside RS256 would invite confusion).
        if let KeySource::Inline(inline) = &keys {
            for (i, key) in inline.keys.iter().enumerate() {
                if !algorithms.iter().any(|a| key.verifies(*a)) {
                    self.sink.push(
                        at(&def.keys),
                        format!("{field}.keys[{i}]"),
                        "this key verifies none of `algorithms` (keys and algorithms must be of one kind)",
                    );
                    ok = false;
                }
            }
            for alg in &algorithms {
                if !inline.keys.iter().any(|k| k.verifies(*alg)) {
                    self.sink.push(
                        at(&def.keys),
                        format!("{field}.keys"),
                        format!("no key here can verify {alg:?} tokens"),
                    );
                    ok = false;
                }
            }
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.validate_nbf = true;
        validation.leeway = match &def.clock_skew {
            None => DEFAULT_SKEW.as_secs(),
            Some(d) => self
                .bounded_duration(d, &format!("{field}.clock_skew"), Duration::from_secs(0), Duration::from_secs(300))?
                .as_secs(),
        };
        match &def.issuer {
            Some(iss) => validation.set_issuer(&[iss.value.as_str()]),
            None => validation.iss = None,
        }
        match &def.audience {
            Some(aud) if aud.value.is_empty() => {
                self.sink.push(
                    aud.referenced,
                    format!("{field}.audience"),
                    "name at least one audience, or leave `audience` out",
                );
                ok = false;
            }
            Some(aud) => validation.set_audience(&aud.value),
            None => validation.validate_aud = false,
        }
        let mut required_claims = Vec::new();
        for claim in def.required_claims.iter().flat_map(|c| &c.value) {
            match claim.as_str() {
                "exp" | "nbf" | "iss" | "aud" | "sub" => {
                    validation.required_spec_claims.insert(claim.clone());
                }
                other => required_claims.push(other.to_string()),
            }
        }
        let claim_headers = self.header_map(def.claims_to_headers.as_ref(), &format!("{field}.claims_to_headers"))?;
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = validation.clone();
                v.algorithms = vec![*alg];
                (*alg, v)
            })
            .collect();
        let verified = moka::sync::Cache::builder().max_capacity(VERIFIED_TOKENS).time_to_live(VERIFIED_FOR).build();
        ok.then_some(JwtPolicy { name, keys, validations, required_claims, claim_headers, verified })
    }

    fn inline_keys(&mut self, keys: &Spanned<Vec<KeyDef>>, field: &str) -> Option<Keys> {
        let mut out = Vec::new();
        let mut ok = true;
        if keys.value.is_empty() {
            self.sink.push(keys.referenced, format!("{field}.keys"), "name at least one key, or leave `keys` out");
            return None;
        }
        for (i, k) in keys.value.iter().enumerate() {
            let kfield = format!("{field}.keys[{i}]");
            let key = match (&k.pem, &k.jwk, &k.secret_env) {
                (Some(pem), None, None) => {
                    pem_key(pem.as_bytes()).map(|key| VerifyingKey { kid: k.kid.clone(), alg: None, key })
                }
                (None, Some(jwk), None) => serde_json::from_value::<Jwk>(jwk.clone())
                    .map_err(|e| format!("not a JWK: {e}"))
                    .and_then(|j| VerifyingKey::from_jwk(&j))
                    .map(|mut key| {
                        key.kid = k.kid.clone().or(key.kid);
                        key
                    }),
                (None, None, Some(var)) => match std::env::var(var) {
                    Ok(secret) if secret.len() >= 32 => DecodingKey::from_secret(secret.as_bytes())
                        .map(|key| VerifyingKey { kid: k.kid.clone(), alg: None, key })
                        .map_err(|e| e.to_string()),
                    Ok(_) => Err(format!("the secret in `{var}` must be at least 32 bytes")),
                    Err(_) => Err(format!("environment variable `{var}` is not set on this node")),
                },
                _ => Err("give exactly one of `pem`, `jwk` and `secret_env`".to_string()),
            };
            match key {
                Ok(key) => out.push(key),
                Err(e) => {
                    self.sink.push(keys.referenced, kfield, e);
                    ok = false;
                }
            }
        }
        ok.then_some(Keys { keys: out })
    }

    fn custom(&mut self, def: &AuthorizerDef, field: &str, name: Arc<str>) -> Option<CustomSpec> {
        self.misplaced(def, field);
        let Some(uri) = &def.uri else {
            self.sink.push(def.kind.referenced, format!("{field}.uri"), "a `custom` authorizer needs `uri`");
            return None;
        };
        let Some(sources) = &def.identity_sources else {
            self.sink.push(
                def.kind.referenced,
                format!("{field}.identity_sources"),
                "a `custom` authorizer needs `identity_sources`, e.g. `[$request.header.Authorization]`",
            );
            return None;
        };
        if sources.value.is_empty() {
            self.sink.push(
                sources.referenced,
                format!("{field}.identity_sources"),
                "name at least one identity source",
            );
            return None;
        }
        // Check the sources' shape now; stage variables are resolved per stage.
        let mut ok = true;
        for (i, s) in sources.value.iter().enumerate() {
            let shape = match s.strip_prefix("$stageVariables.") {
                Some(v) if !v.is_empty() => Ok(()),
                _ => IdentitySource::parse(s, &BTreeMap::new()).map(|_| ()),
            };
            if let Err(e) = shape {
                self.sink.push(sources.referenced, format!("{field}.identity_sources[{i}]"), e);
                ok = false;
            }
        }
        let timeout = match &def.timeout {
            None => DEFAULT_CALLOUT_TIMEOUT,
            Some(t) => {
                self.bounded_duration(t, &format!("{field}.timeout"), Duration::from_secs(1), Duration::from_secs(30))?
            }
        };
        let ttl = match &def.ttl {
            None => DEFAULT_TTL,
            Some(t) => {
                self.bounded_duration(t, &format!("{field}.ttl"), Duration::from_secs(0), Duration::from_secs(3600))?
            }
        };
        let cache_size = match &def.cache_size {
            None => DEFAULT_CACHE_SIZE,
            Some(s) if (1..=10_000_000).contains(&s.value) => s.value,
            Some(s) => {
                self.sink.push(s.referenced, format!("{field}.cache_size"), "must be from 1 to 10000000");
                return None;
            }
        };
        let tls = self.trust(def.ca_file.as_ref(), field, def.kind.referenced)?;
        let callee = match Callee::new(&uri.value, timeout, tls) {
            Ok(c)
                if (uri.value.starts_with("http://") || uri.value.starts_with("https://"))
                    && !uri.value.contains("${") =>
            {
                c
            }
            _ => {
                self.sink.push(
                    uri.referenced,
                    format!("{field}.uri"),
                    format!("`{}` is not an http(s) URL", uri.value),
                );
                return None;
            }
        };
        let context_headers =
            self.header_map(def.context_to_headers.as_ref(), &format!("{field}.context_to_headers"))?;
        ok.then(|| CustomSpec {
            name,
            callee: Arc::new(callee),
            sources: sources.value.clone(),
            sources_at: sources.referenced,
            field: format!("{field}.identity_sources"),
            ttl,
            cache_size,
            context_headers,
        })
    }

    /// The stage that enforces `spec` on one route of one stage.
    pub(super) fn authorizer_stage(
        &mut self,
        spec: &AuthorizerSpec,
        scopes: &[String],
        route: (&str, &str, &str),
        variables: &BTreeMap<String, String>,
    ) -> Option<Arc<dyn Stage>> {
        match spec {
            AuthorizerSpec::Jwt(policy) => {
                Some(Arc::new(JwtAuthorizer { policy: policy.clone(), scopes: scopes.to_vec() }))
            }
            AuthorizerSpec::Custom(custom) => {
                let mut sources = Vec::new();
                for (i, s) in custom.sources.iter().enumerate() {
                    match IdentitySource::parse(s, variables) {
                        Ok(source) => sources.push(source),
                        Err(e) => {
                            self.sink.push(
                                custom.sources_at,
                                format!("{}[{i}]", custom.field),
                                format!("on stage `{}`: {e}", route.1),
                            );
                            return None;
                        }
                    }
                }
                let (api, stage, key) = route;
                Some(Arc::new(CustomAuthorizer {
                    name: custom.name.clone(),
                    callee: custom.callee.clone(),
                    sources,
                    ttl: custom.ttl,
                    cache_size: custom.cache_size,
                    context_headers: custom.context_headers.clone(),
                    route: (api.to_string(), stage.to_string(), key.to_string()),
                    cache: OnceLock::new(),
                }))
            }
        }
    }

    /// Checks that `used` names one of `authorizers`; a route's scopes need a JWT one.
    pub(super) fn check_authorizer_use(
        &mut self,
        used: &AuthorizerUse<'_>,
        authorizers: &HashMap<String, AuthorizerSpec>,
        declared: &[AuthorizerDef],
    ) -> bool {
        if authorizers.contains_key(&used.name.value) {
            return true;
        }
        // An authorizer with errors of its own is reported there, not again here.
        if !declared.iter().any(|d| d.name.value == used.name.value) {
            self.sink.push(
                used.name.referenced,
                used.field.clone(),
                format!("no authorizer is named `{}` (declare it under `authorizers`)", used.name.value),
            );
        }
        false
    }

    /// A route's `scopes` need a JWT authorizer on the route or, failing that, on `stage`.
    pub(super) fn check_scopes(
        &mut self,
        api: &ApiDef,
        field: &str,
        authorizers: &HashMap<String, AuthorizerSpec>,
        stage: &StageDef,
    ) {
        for (i, route) in api.routes.iter().enumerate() {
            let Some(scopes) = &route.scopes else { continue };
            let name = route.authorizer.as_ref().or(stage.authorizer.as_ref()).map(|a| &a.value);
            let problem = match name.map(|n| authorizers.get(n)) {
                None => Some(format!("scopes need a `jwt` authorizer on the route or on stage `{}`", stage.name.value)),
                Some(Some(AuthorizerSpec::Custom(_))) => Some("scopes apply to `jwt` authorizers only".to_string()),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                self.sink.push(scopes.referenced, format!("{field}.routes[{i}].scopes"), problem);
            }
        }
    }

    /// `name: header` pairs, the header names checked.
    fn header_map(
        &mut self,
        map: Option<&Spanned<BTreeMap<String, String>>>,
        field: &str,
    ) -> Option<Vec<(String, HeaderName)>> {
        let Some(map) = map else { return Some(Vec::new()) };
        let mut out = Vec::new();
        let mut ok = true;
        for (key, header) in &map.value {
            match HeaderName::try_from(header.as_str()) {
                Ok(h) if !is_reserved(&h) => out.push((key.clone(), h)),
                _ => {
                    self.sink.push(
                        map.referenced,
                        format!("{field}.{key}"),
                        format!("`{header}` is not a header name the gateway may set"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A duration from `least` to `most`.
    pub(super) fn bounded_duration(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        least: Duration,
        most: Duration,
    ) -> Option<Duration> {
        match parse_duration(&value.value) {
            Ok(d) if (least..=most).contains(&d) => Some(d),
            _ => {
                self.sink.push(
                    value.referenced,
                    field,
                    format!(
                        "a duration from {} to {}, e.g. `{}`",
                        spelled(least),
                        spelled(most),
                        spelled(least.max(Duration::from_secs(1)))
                    ),
                );
                None
            }
        }
    }
}

/// A duration as configuration spells it (`300ms`, `30s`).
fn spelled(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// Headers the gateway owns on the way upstream.
fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "te"
            | "x-request-id"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}

/// A PEM public key of any family.
fn pem_key(pem: &[u8]) -> Result<DecodingKey, String> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| "`pem` is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)".to_string())
}

fn at<T>(v: &Option<Spanned<T>>) -> Location {
    v.as_ref().map_or(Location::UNKNOWN, |s| s.referenced)
}
