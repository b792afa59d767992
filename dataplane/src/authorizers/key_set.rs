//! The keys a JWT authorizer verifies signatures with: given in the configuration, or a
//! JSON Web Key Set (JWKS) the node fetches from an identity provider and keeps fresh.
//!
//! A fetched set is refreshed in the background before its `Cache-Control: max-age` runs
//! out (every five minutes when the provider says nothing), and fetched again at most once
//! per `refetch_interval` when a token names a key id the set does not hold (a provider
//! that rotated its keys). A failed fetch keeps the last good set: an identity provider's
//! outage does not lock users out of APIs whose keys have not changed.
//!
//! The request path only reads the current set (an atomic load); fetches are single-flight,
//! so a burst of tokens with an unknown `kid` makes one call, not one per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::integration::callee::Callee;
use crate::integration::upstreams::Upstreams;

/// The largest JWKS document the node reads.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How often a set is refreshed when its provider does not say.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const MIN_REFRESH: Duration = Duration::from_secs(30);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Retries after a failed background fetch start here and double up to a minute.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// One key a signature may be checked with.
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// The only algorithm the key may verify, when its JWK names one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material: HMAC keys are secrets.
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Whether this key may verify a token signed with `alg`: the same family (never an
    /// HMAC algorithm with a public key, or the reverse) and, when the key is pinned to an
    /// algorithm, that one.
    pub fn verifies(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }

    /// A key from one JWK, or why it cannot be used for signatures.
    pub fn from_jwk(jwk: &Jwk) -> Result<VerifyingKey, String> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("its `use` is not `sig`".into());
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(a.to_string().parse::<Algorithm>().map_err(|_| format!("algorithm {a} cannot sign"))?),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("not a usable key: {e}"))?;
        Ok(VerifyingKey { kid: jwk.common.key_id.clone(), alg, key })
    }
}

/// A set of keys as fetched (or configured), searched by key id.
#[derive(Debug, Default)]
pub struct Keys {
    pub keys: Vec<VerifyingKey>,
}

impl Keys {
    /// The keys that may verify a token with header `kid` and `alg`.
    pub fn candidates<'k>(&'k self, kid: Option<&'k str>, alg: Algorithm) -> impl Iterator<Item = &'k VerifyingKey> {
        self.keys
            .iter()
            .filter(move |k| k.verifies(alg) && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Parses a JWKS document; keys the gateway cannot use are skipped and named.
    pub fn from_jwks(body: &[u8]) -> Result<(Keys, Vec<String>), String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document (`{{\"keys\": [...]}}`): {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in document.keys.into_iter().enumerate() {
            let kid = value.get("kid").and_then(|k| k.as_str()).map_or_else(|| format!("#{i}"), str::to_string);
            match serde_json::from_value::<Jwk>(value)
                .map_err(|e| e.to_string())
                .and_then(|j| VerifyingKey::from_jwk(&j))
            {
                Ok(key) => keys.push(key),
                Err(e) => skipped.push(format!("key {kid}: {e}")),
            }
        }
        Ok((Keys { keys }, skipped))
    }
}

/// A JWKS URL's keys, fetched and kept fresh. Shared by every authorizer (and revision)
/// that names the same URL.
#[derive(Debug)]
pub struct KeySet {
    callee: Arc<Callee>,
    upstreams: Arc<Upstreams>,
    refetch_interval: Duration,
    current: ArcSwap<Keys>,
    /// When the last fetch started; held across a fetch so that fetches are single-flight.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// How long the last good set may be used before a refresh, in seconds.
    refresh_every: AtomicU64,
}

/// How a fetch went.
enum Fetched {
    /// The new set, and how long until it should be refreshed.
    Keys(Duration),
    Failed,
}

impl KeySet {
    /// The keys as last fetched (empty before the first fetch succeeds).
    pub fn keys(&self) -> arc_swap::Guard<Arc<Keys>> {
        self.current.load()
    }

    pub fn url(&self) -> String {
        self.callee.uri().to_string()
    }

    /// Fetches the set unless a fetch started less than `refetch_interval` ago (or one is
    /// under way: this waits for it instead). For a token naming a key the set lacks.
    pub async fn refetch(&self) {
        self.fetch_unless_within(self.refetch_interval).await;
    }

    async fn fetch_unless_within(&self, gap: Duration) -> Option<Fetched> {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < gap) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.fetch().await)
    }

    async fn fetch(&self) -> Fetched {
        let url = self.callee.uri();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        let answer = self.callee.call(Method::GET, headers, bytes::Bytes::new(), &self.upstreams, MAX_JWKS_BYTES).await;
        let parsed = match answer {
            Err(e) => Err(e.to_string()),
            Ok(a) if a.status != StatusCode::OK => Err(format!("it answered {}", a.status)),
            Ok(a) => Keys::from_jwks(&a.body).map(|(keys, skipped)| (keys, skipped, refresh_after(&a.headers))),
        };
        match parsed {
            Ok((keys, skipped, refresh)) => {
                for reason in &skipped {
                    tracing::warn!(%url, "JWKS key skipped: {reason}");
                }
                tracing::debug!(%url, keys = keys.keys.len(), "JWKS fetched");
                metrics::counter!("meridian_jwks_fetches_total", "result" => "ok").increment(1);
                self.current.store(Arc::new(keys));
                self.refresh_every.store(refresh.as_secs(), Ordering::Relaxed);
                Fetched::Keys(refresh)
            }
            Err(e) => {
                tracing::warn!(%url, "JWKS fetch failed; the last good keys stay in use: {e}");
                metrics::counter!("meridian_jwks_fetches_total", "result" => "error").increment(1);
                Fetched::Failed
            }
        }
    }

    /// Keeps `set` fresh until the last authorizer using it is gone.
    async fn refresh(set: Weak<KeySet>) {
        let mut retry = FIRST_RETRY;
        let mut wait = Duration::ZERO;
        loop {
            tokio::time::sleep(wait).await;
            let Some(set) = set.upgrade() else { return };
            // The first fetch may already be made by a request that could not wait.
            let gap = if wait.is_zero() { set.refetch_interval } else { Duration::ZERO };
            wait = match set.fetch_unless_within(gap).await {
                // Someone else fetched: refresh when that set is due.
                None => Duration::from_secs(set.refresh_every.load(Ordering::Relaxed)),
                Some(Fetched::Keys(after)) => {
                    retry = FIRST_RETRY;
                    after
                }
                Some(Fetched::Failed) => {
                    let now = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    now
                }
            };
        }
    }
}

/// When to refresh a set, from its `Cache-Control: max-age` (at 80 % of it).
fn refresh_after(headers: &HeaderMap) -> Duration {
    let max_age = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=").and_then(|s| s.trim().parse::<u64>().ok()));
    match max_age {
        Some(secs) => Duration::from_secs(secs * 4 / 5).clamp(MIN_REFRESH, MAX_REFRESH),
        None => DEFAULT_REFRESH,
    }
}

/// The node's key sets by URL, shared across reloads; a set no authorizer uses any more
/// stops refreshing and is dropped.
#[derive(Debug)]
pub struct KeySets {
    upstreams: Arc<Upstreams>,
    sets: Mutex<HashMap<String, Arc<KeySet>>>,
}

impl KeySets {
    pub fn new(upstreams: Arc<Upstreams>) -> KeySets {
        KeySets { upstreams, sets: Mutex::new(HashMap::new()) }
    }

    /// The set at `callee`'s URL, starting its refresh when it is new.
    pub fn bind(&self, callee: &Arc<Callee>, refetch_interval: Duration) -> Arc<KeySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|_, set| Arc::strong_count(set) > 1);
        let url = callee.uri().to_string();
        if let Some(set) = sets.get(&url).filter(|s| s.refetch_interval == refetch_interval) {
            return set.clone();
        }
        let set = Arc::new(KeySet {
            callee: callee.clone(),
            upstreams: self.upstreams.clone(),
            refetch_interval,
            current: ArcSwap::from_pointee(Keys::default()),
            last_attempt: tokio::sync::Mutex::new(None),
            refresh_every: AtomicU64::new(DEFAULT_REFRESH.as_secs()),
        });
        tokio::spawn(KeySet::refresh(Arc::downgrade(&set)));
        sets.insert(url, set.clone());
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_max_age_within_bounds() {
        let mut h = HeaderMap::new();
        assert_eq!(refresh_after(&h), DEFAULT_REFRESH);
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
        assert_eq!(refresh_after(&h), Duration::from_secs(2880));
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
        assert_eq!(refresh_after(&h), MIN_REFRESH);
    }

    #[test]
    fn a_jwks_document_keeps_signing_keys_and_names_the_rest() {
        let body = br#"{"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "alg": "HS256"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}
        ]}"#;
        let (keys, skipped) = Keys::from_jwks(body).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(keys.candidates(Some("h"), Algorithm::HS256).next().is_some());
        // An HMAC key never verifies an RSA token, and a pinned key no other algorithm.
        assert!(keys.candidates(Some("h"), Algorithm::RS256).next().is_none());
        assert!(keys.candidates(Some("h"), Algorithm::HS512).next().is_none());
        assert!(Keys::from_jwks(b"[]").is_err());
    }
}
