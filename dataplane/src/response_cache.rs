//! Response caches: one per API stage, bounded in bytes, kept by the node across reloads
//! (the cache stage binds to its stage's cache on first use, so a reload that leaves the
//! stage's capacity alone keeps every entry).
//!
//! Besides the entries, a cache knows which keys are being filled: the first miss for a key
//! fills it, and the misses that arrive meanwhile wait for that fill instead of calling the
//! upstream too (stampede protection). A fill that ends without a response to keep (not
//! cacheable, too large, the client gone) lets its waiters go to the upstream themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use metrics::Counter;
use tokio::sync::watch;

/// A response kept in a cache.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub expires: Instant,
}

impl CachedResponse {
    /// Bytes it holds, as the capacity counts them.
    fn weight(&self, key: &str) -> u32 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 8).sum();
        u32::try_from(key.len() + headers + self.body.len() + 96).unwrap_or(u32::MAX)
    }
}

/// What a fill's waiters learn: the response, or that there is none to share.
type FillOutcome = Option<Arc<CachedResponse>>;

/// One stage's cache.
#[derive(Debug)]
pub struct StageCache {
    entries: moka::sync::Cache<String, Arc<CachedResponse>>,
    fills: Mutex<HashMap<String, watch::Receiver<FillOutcome>>>,
    pub hits: Counter,
    pub misses: Counter,
}

/// How a miss goes on: it fills the key, or waits for the fill already under way.
pub enum Miss {
    Fill(FillGuard),
    Wait(watch::Receiver<FillOutcome>),
}

/// The right, and the duty, to fill one key: completing it stores the response and hands it
/// to the waiters; dropping it unfilled sends them to the upstream.
#[derive(Debug)]
pub struct FillGuard {
    cache: Arc<StageCache>,
    key: String,
    sender: Option<watch::Sender<FillOutcome>>,
}

impl FillGuard {
    /// Stores `response` and gives it to whoever waits.
    pub fn complete(mut self, response: CachedResponse) {
        let response = Arc::new(response);
        self.cache.entries.insert(self.key.clone(), response.clone());
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Some(response));
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.cache.fills.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(None);
        }
    }
}

impl StageCache {
    fn new(api: &str, stage: &str, capacity_bytes: u64) -> StageCache {
        let labels = |result: &'static str| metrics::counter!("meridian_cache_requests_total", "api" => api.to_string(), "stage" => stage.to_string(), "result" => result);
        let evictions =
            metrics::counter!("meridian_cache_evictions_total", "api" => api.to_string(), "stage" => stage.to_string());
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| value.weight(key))
            .time_to_live(MAX_TTL)
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.increment(1);
                }
            })
            .build();
        StageCache { entries, fills: Mutex::new(HashMap::new()), hits: labels("hit"), misses: labels("miss") }
    }

    /// The entry for `key`, unless it has expired.
    pub fn get(&self, key: &str, now: Instant) -> Option<Arc<CachedResponse>> {
        let entry = self.entries.get(key)?;
        if entry.expires > now {
            Some(entry)
        } else {
            self.entries.invalidate(key);
            None
        }
    }

    /// A miss on `key`: fill it, or wait for the fill under way.
    pub fn miss(self: &Arc<Self>, key: String) -> Miss {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(receiver) = fills.get(&key) {
            return Miss::Wait(receiver.clone());
        }
        let (sender, receiver) = watch::channel(None);
        fills.insert(key.clone(), receiver);
        Miss::Fill(FillGuard { cache: self.clone(), key, sender: Some(sender) })
    }

    /// Bytes held now (entries' weights; updated lazily by the cache).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Waits for a fill: its response, or `None` when there will be none (or not in `wait`).
pub async fn wait_for_fill(mut receiver: watch::Receiver<FillOutcome>, wait: Duration) -> FillOutcome {
    let filled = tokio::time::timeout(wait, receiver.wait_for(Option::is_some)).await;
    match filled {
        Ok(Ok(outcome)) => outcome.clone(),
        // The fill ended without a response, or took too long.
        _ => None,
    }
}

/// The longest any entry lives (a route's TTL is at most this).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// The node's response caches, by stage and capacity.
#[derive(Debug, Default)]
pub struct ResponseCaches {
    caches: Mutex<HashMap<String, Arc<StageCache>>>,
}

/// What to empty: a stage's cache, or only one route's entries in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    pub api: String,
    pub stage: String,
    /// A route key (`GET /pets/{id}`); `None` for the whole stage.
    pub route: Option<String>,
}

impl ResponseCaches {
    /// The cache of `api`'s stage `stage` holding at most `capacity_bytes`.
    pub fn bind(&self, api: &str, stage: &str, capacity_bytes: u64) -> Arc<StageCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.retain(|_, c| Arc::strong_count(c) > 1);
        let key = format!("{api}\n{stage}\n{capacity_bytes}");
        caches.entry(key).or_insert_with(|| Arc::new(StageCache::new(api, stage, capacity_bytes))).clone()
    }

    /// Empties what `flush` names; the number of stage caches it touched.
    pub fn flush(&self, flush: &Flush) -> usize {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{}\n{}\n", flush.api, flush.stage);
        let mut touched = 0;
        for cache in caches.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, c)| c) {
            touched += 1;
            match &flush.route {
                None => cache.entries.invalidate_all(),
                Some(route) => {
                    // Keys start with `METHOD ROUTE-KEY\n`.
                    let route = format!("{route}\n");
                    let matching = move |key: &String, _: &Arc<CachedResponse>| {
                        key.split_once(' ').is_some_and(|(_, rest)| rest.starts_with(&route))
                    };
                    if let Err(e) = cache.entries.invalidate_entries_if(matching) {
                        tracing::warn!(error = %e, "a route's cache entries could not be flushed; flushing the stage");
                        cache.entries.invalidate_all();
                    }
                }
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: usize, ttl: Duration) -> CachedResponse {
        CachedResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            expires: Instant::now() + ttl,
        }
    }

    #[tokio::test]
    async fn one_fill_per_key_and_its_waiters_get_what_it_stored() {
        let cache = ResponseCaches::default().bind("a", "s", 1 << 20);
        let Miss::Fill(guard) = cache.miss("k".into()) else { panic!("the first miss fills") };
        let Miss::Wait(waiting) = cache.miss("k".into()) else { panic!("the second waits") };
        let waiter = tokio::spawn(wait_for_fill(waiting, Duration::from_secs(5)));
        guard.complete(response(10, Duration::from_secs(60)));
        assert_eq!(waiter.await.unwrap().unwrap().body.len(), 10);
        assert!(cache.get("k", Instant::now()).is_some());
        // A fill given up sends its waiters on, and the next miss fills again.
        let Miss::Fill(guard) = cache.miss("j".into()) else { panic!() };
        let Miss::Wait(waiting) = cache.miss("j".into()) else { panic!() };
        drop(guard);
        assert!(wait_for_fill(waiting, Duration::from_secs(5)).await.is_none());
        assert!(matches!(cache.miss("j".into()), Miss::Fill(_)));
    }

    #[test]
    fn a_flush_empties_a_stage_or_one_route() {
        let caches = ResponseCaches::default();
        let cache = caches.bind("a", "s", 1 << 20);
        let other = caches.bind("a", "t", 1 << 20);
        for (c, key) in [(&cache, "GET GET /x\n/s/x\n"), (&cache, "GET GET /y\n/s/y\n"), (&other, "GET GET /x\n/t/x\n")]
        {
            let Miss::Fill(guard) = c.miss(key.into()) else { panic!() };
            guard.complete(response(1, Duration::from_secs(60)));
        }
        let now = Instant::now();
        let route = Flush { api: "a".into(), stage: "s".into(), route: Some("GET /x".into()) };
        assert_eq!(caches.flush(&route), 1);
        cache.entries.run_pending_tasks();
        assert!(cache.get("GET GET /x\n/s/x\n", now).is_none());
        assert!(cache.get("GET GET /y\n/s/y\n", now).is_some());
        caches.flush(&Flush { route: None, ..route });
        assert!(cache.get("GET GET /y\n/s/y\n", now).is_none());
        assert!(other.get("GET GET /x\n/t/x\n", now).is_some(), "another stage keeps its entries");
    }

    #[test]
    fn entries_expire_and_the_capacity_holds() {
        let cache = ResponseCaches::default().bind("a", "s", 100_000);
        let Miss::Fill(guard) = cache.miss("old".into()) else { panic!() };
        guard.complete(response(10, Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get("old", Instant::now()).is_none());
        for i in 0..100 {
            let Miss::Fill(guard) = cache.miss(format!("k{i}")) else { panic!() };
            guard.complete(response(10_000, Duration::from_secs(60)));
        }
        assert!(cache.weighted_size() <= 100_000, "{} bytes held", cache.weighted_size());
    }
}
