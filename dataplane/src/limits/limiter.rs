//! Admission against global rate limits, from per-node G-counters and a local token bucket.
//!
//! Each limited scope (the cluster default, a stage, a route, later a key on a plan) keeps
//! G-counters for the current and the previous one-second window, one slot per node. A node
//! admits a request when
//! - the cluster-wide estimate for the sliding second, `previous × (1 − f) + current` over all
//!   slots (`f` is how far into the current second we are), stays below the rate, and
//! - its local token bucket (capacity `burst`, refilled at `rate`) has a token, which bounds
//!   how much one node can admit at once.
//!
//! A peer that has not been heard from recently is assumed to keep consuming at its rate of
//! the previous second (its current slot is taken as at least `previous × f`), so a partition
//! cannot multiply a limit by the number of sides: each side keeps counting the other's last
//! known rate. Scopes live in sharded maps (no global lock on the request path) and the
//! number of scopes is capped, evicting the least recently used.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::NodeId;
use serde::{Deserialize, Serialize};

use super::counter::GCounter;
use super::per_node::PerNode;
use crate::table_hasher::TableHasher;

/// A limit: `limit` requests per `period`. Per second it is a rate limit over a sliding
/// second, with `burst` bounding what one node admits at once; per day, week or month it is
/// a quota over the UTC calendar period (and `burst` is unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub limit: u64,
    pub burst: u64,
    pub period: Period,
}

impl Rate {
    /// A rate limit of `limit` requests per second with `burst`.
    pub const fn per_second(limit: u64, burst: u64) -> Rate {
        Rate { limit, burst, period: Period::Second }
    }

    /// A quota of `limit` requests per calendar `period`.
    pub const fn quota(limit: u64, period: Period) -> Rate {
        Rate { limit, burst: 0, period }
    }
}

/// The window a limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Period {
    Second,
    Day,
    Week,
    Month,
    /// Fixed windows of this many seconds, counted as a sliding window (the firewall's
    /// rate-based rules). Zero counts as one.
    Seconds(u32),
}

const DAY_MS: u64 = 86_400_000;

impl Period {
    /// The index of the window holding `now_ms`, and the milliseconds until it ends.
    pub fn window(self, now_ms: u64) -> (u64, u64) {
        let days = now_ms / DAY_MS;
        match self {
            Period::Second => (now_ms / 1000, 1000 - now_ms % 1000),
            Period::Day => (days, DAY_MS - now_ms % DAY_MS),
            // 1970-01-01 was a Thursday: weeks start on Mondays.
            Period::Week => ((days + 3) / 7, ((days + 3) / 7 + 1) * 7 * DAY_MS - 3 * DAY_MS - now_ms),
            Period::Month => {
                let (year, month, _) = crate::observe::time::civil_from_days(days as i64);
                let index = (year * 12 + i64::from(month) - 1) as u64;
                let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                let next_start = crate::observe::time::days_from_civil(next_year, next_month, 1) as u64 * DAY_MS;
                (index, next_start.saturating_sub(now_ms))
            }
            Period::Seconds(n) => {
                let length = u64::from(n.max(1)) * 1000;
                (now_ms / length, length - now_ms % length)
            }
        }
    }

    /// Whether this is a calendar quota period (whose finished windows are kept).
    pub fn is_calendar(self) -> bool {
        matches!(self, Period::Day | Period::Week | Period::Month)
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Seconds(_) => "window",
        }
    }
}

/// The verdict for one request on one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Which of the request's scopes decided (the refusing scope with the smallest limit, or
    /// the admitting one with the least room).
    pub scope: usize,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window moves on.
    pub reset_secs: u64,
}

/// One gossiped observation: `node`'s slot of `scope` in window `window` is `value`, and
/// (for rate scopes) its admissions in that window fell between `span.first_ms` and
/// `span.last_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub scope: String,
    pub period: Period,
    pub window: u64,
    pub node: NodeId,
    pub value: u64,
    pub span: Option<Span>,
}

/// When a node's admissions in one window happened: the first and the last, in Unix ms.
/// It tells how much of a finished second still lies inside the sliding second: all of it
/// for a client that came once just before the boundary, none for one that came early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub first_ms: u64,
    pub last_ms: u64,
}

impl Span {
    fn at(ms: u64) -> Span {
        Span { first_ms: ms, last_ms: ms }
    }

    fn widen(&mut self, ms: u64) {
        self.first_ms = self.first_ms.min(ms);
        self.last_ms = self.last_ms.max(ms);
    }

    /// How many of `count` admissions spread evenly over this span happened after
    /// `start_ms`: exact for a steady client, and never more than `count`.
    fn after(self, count: u64, start_ms: u64) -> f64 {
        if count == 0 || self.last_ms <= start_ms {
            return 0.0;
        }
        if self.first_ms > start_ms || count == 1 || self.first_ms == self.last_ms {
            return count as f64;
        }
        let gap = (self.last_ms - self.first_ms) as f64 / (count - 1) as f64;
        let before = ((start_ms - self.first_ms) as f64 / gap).floor() + 1.0;
        (count as f64 - before).max(1.0)
    }
}

/// How long a peer may stay silent before its consumption is extrapolated (members gossip,
/// if only a heartbeat, to every peer at least every 250 ms).
const STALE_AFTER: Duration = Duration::from_millis(1000);
/// How long a peer that counts may go unheard before its current second is extrapolated at
/// its previous second's pace (gossip rounds are 50 ms apart).
const LAGGING_AFTER: Duration = Duration::from_millis(150);
const SHARDS: usize = 16;
/// Finished windows a calendar scope remembers (about 13 months of days).
const HISTORY_WINDOWS: usize = 400;

#[derive(Debug)]
struct ScopeState {
    period: Period,
    /// Each node's last three non-zero window counts (rate scopes). A silent peer is assumed
    /// to keep consuming at the largest of them: the window in which it fell silent is only
    /// partly known, the ones before it are whole.
    last_rates: PerNode<[u64; 3]>,
    /// Finished windows of calendar scopes (at most `HISTORY_WINDOWS`).
    history: BTreeMap<u64, GCounter>,
    window: u64,
    current: GCounter,
    previous: GCounter,
    /// When each node's admissions of the current and previous windows happened.
    current_spans: PerNode<Span>,
    previous_spans: PerNode<Span>,
    /// The local bucket; `None` until the first admission here (a scope first seen in gossip
    /// starts with a full bucket).
    tokens: Option<f64>,
    refilled: Instant,
    dirty: bool,
    /// Requests this node admitted since its last gossip round (others have not seen them).
    unsent: u64,
    last_used: Instant,
}

impl ScopeState {
    fn new(window: u64, now: Instant) -> Self {
        ScopeState {
            period: Period::Second,
            last_rates: PerNode::default(),
            history: Default::default(),
            window,
            current: GCounter::default(),
            previous: GCounter::default(),
            current_spans: PerNode::default(),
            previous_spans: PerNode::default(),
            tokens: None,
            refilled: now,
            dirty: false,
            unsent: 0,
            last_used: now,
        }
    }

    /// Moves the windows forward to `window`.
    /// Counts one admitted request of this node.
    fn count(&mut self, me: NodeId, now_unix_ms: u64) {
        self.current.increment(me, 1);
        if self.period == Period::Second {
            self.current_spans.get_or_insert_with(me, || Span::at(now_unix_ms)).widen(now_unix_ms);
        }
        self.tokens = self.tokens.map(|t| t - 1.0);
        self.unsent += 1;
        self.dirty = true;
    }

    fn rotate(&mut self, window: u64) {
        if window <= self.window {
            return;
        }
        if self.period.is_calendar() {
            // Calendar scopes keep their finished windows, for usage reports.
            let previous = std::mem::take(&mut self.previous);
            if previous != GCounter::default() {
                self.history.insert(self.window.saturating_sub(1), previous);
            }
            if window > self.window + 1 && self.current != GCounter::default() {
                self.history.insert(self.window, std::mem::take(&mut self.current));
            }
            while self.history.len() > HISTORY_WINDOWS {
                self.history.pop_first();
            }
        }
        if self.period == Period::Second {
            // Remember each node's recent window counts before they are dropped.
            for (node, count) in self.previous.slots() {
                if count > 0 {
                    let ring = self.last_rates.get_or_insert_with(node, Default::default);
                    ring.rotate_right(1);
                    ring[0] = count;
                }
            }
        }
        let next = window == self.window + 1;
        self.previous = if next { std::mem::take(&mut self.current) } else { GCounter::default() };
        self.previous_spans = if next { std::mem::take(&mut self.current_spans) } else { PerNode::default() };
        self.current = GCounter::default();
        self.current_spans.clear();
        self.window = window;
    }

    /// The counter of `window`, wherever it is kept.
    fn counter(&self, window: u64) -> Option<&GCounter> {
        if window == self.window {
            Some(&self.current)
        } else if window + 1 == self.window {
            Some(&self.previous)
        } else {
            self.history.get(&window)
        }
    }
}

/// The nodes of two lists in ascending order, in ascending order without repeats: the
/// nodes counting in a scope come from its counters' sorted slots, merged on every admission
/// without allocating or sorting.
fn union(a: impl Iterator<Item = NodeId>, b: impl Iterator<Item = NodeId>) -> impl Iterator<Item = NodeId> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x < y => a.next(),
        (Some(x), Some(y)) if x > y => b.next(),
        (Some(_), Some(_)) => {
            b.next();
            a.next()
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// How long each peer has gone unheard, read once per admission: a list, since a cluster has
/// a handful of peers, so that no request allocates for it.
type PeerSilence = smallvec::SmallVec<[(NodeId, Duration); 8]>;

/// Some of the limiter's scopes, behind one lock.
type Shard = HashMap<Arc<str>, ScopeState, TableHasher>;

/// The node's limiter, shared by the request path and gossip.
#[derive(Debug)]
pub struct Limiter {
    me: AtomicU64,
    shards: Vec<Mutex<Shard>>,
    heard: Mutex<HashMap<NodeId, Instant>>,
    max_scopes_per_shard: usize,
    /// Picks a scope's shard; the shards' maps hash the same way.
    hasher: TableHasher,
    evicted: metrics::Counter,
}

impl Limiter {
    /// A limiter for node `me` tracking at most `max_scopes` scopes.
    pub fn new(me: NodeId, max_scopes: usize) -> Self {
        Limiter {
            me: AtomicU64::new(me),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            heard: Mutex::new(HashMap::new()),
            max_scopes_per_shard: (max_scopes / SHARDS).max(1),
            hasher: Default::default(),
            evicted: metrics::counter!("meridian_limit_scopes_evicted_total"),
        }
    }

    /// Sets this node's id once it is known (a node joining a cluster learns it late).
    pub fn set_node(&self, me: NodeId) {
        self.me.store(me, Ordering::Relaxed);
    }

    fn shard(&self, scope: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(scope) as usize) % SHARDS]
    }

    /// For each peer: how long since it was last heard from.
    fn peer_silence_at(&self, now: Instant) -> PeerSilence {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.iter().map(|(n, t)| (*n, now.duration_since(*t))).collect()
    }

    /// The cluster-wide estimate of requests in the sliding second ending at `now_ms`.
    fn estimate<'s>(state: &ScopeState, me: NodeId, now_ms: u64, silence: &impl Fn() -> &'s PeerSilence) -> f64 {
        let frac = (now_ms % 1000) as f64 / 1000.0;
        let start_ms = now_ms.saturating_sub(1000);
        union(union(state.current.nodes(), state.previous.nodes()), state.last_rates.nodes())
            .map(|n| {
                let mut previous = state.previous.slot(n) as f64;
                let mut current = state.current.slot(n) as f64;
                let quiet = if n == me {
                    Duration::ZERO
                } else {
                    silence().iter().find(|(peer, _)| *peer == n).map_or(Duration::MAX, |(_, quiet)| *quiet)
                };
                let silent = quiet > STALE_AFTER;
                if silent {
                    // A silent peer keeps consuming at its last known rate, however long the
                    // silence: its share is not handed out to this side of a partition.
                    let recent = state.last_rates.get(n).map_or(0, |r| r.iter().copied().max().unwrap_or(0));
                    previous = previous.max(recent as f64);
                }
                if quiet > LAGGING_AFTER {
                    // Missed gossip rounds: count at least its last second's pace, from the
                    // first moments of a partition on (the chaos suite's quota-under-partition
                    // saw 1.7x the limit in the second before a peer counted as silent).
                    current = current.max(previous * frac);
                }
                // The part of the previous second still inside the sliding one: from when the
                // admissions happened, or an even spread when that is unknown.
                let still_inside = match state.previous_spans.get(n) {
                    Some(span) if !silent => span.after(state.previous.slot(n), start_ms),
                    _ => previous * (1.0 - frac),
                };
                still_inside + current
            })
            .sum()
    }

    /// Decides every scope of a request together: admitted only if all admit, and counted in
    /// all of them only then. Returns the decision of the tightest scope (the first refusal,
    /// or the one with the least room).
    pub fn admit(&self, scopes: &[(Arc<str>, Rate)], now_unix_ms: u64) -> Decision {
        self.admit_at(scopes, now_unix_ms, Instant::now(), true)
    }

    /// What [`Limiter::admit`] would decide, without counting the request.
    pub fn peek(&self, scopes: &[(Arc<str>, Rate)], now_unix_ms: u64) -> Decision {
        self.admit_at(scopes, now_unix_ms, Instant::now(), false)
    }

    /// [`Limiter::admit`] at a given monotonic time (simulations run on their own clock),
    /// counting an admitted request only when `count`.
    fn admit_at(&self, scopes: &[(Arc<str>, Rate)], now_unix_ms: u64, now: Instant, count: bool) -> Decision {
        let me = self.me.load(Ordering::Relaxed);
        // How long each peer has been silent, read (under the peers' lock) only for a scope
        // that peers have counted in.
        let silence = std::cell::OnceCell::new();
        let silence = || silence.get_or_init(|| self.peer_silence_at(now));
        let mut tightest: Option<Decision> = None;
        for (index, (scope, rate)) in scopes.iter().enumerate() {
            let (window, left_ms) = rate.period.window(now_unix_ms);
            let mut shard = self.shard(scope).lock().unwrap_or_else(|p| p.into_inner());
            let state = self.entry(&mut shard, scope, window, now);
            state.rotate(window);
            state.period = rate.period;
            state.last_used = now;
            let (estimate, tokens) = if rate.period == Period::Second {
                let elapsed = now.duration_since(state.refilled).as_secs_f64();
                let tokens = match state.tokens {
                    Some(t) => (t + elapsed * rate.limit as f64).min(rate.burst as f64),
                    None => rate.burst as f64,
                };
                state.tokens = Some(tokens);
                state.refilled = now;
                (Self::estimate(state, me, now_unix_ms, &silence), tokens)
            } else {
                // A quota counts its calendar period only; there is no bucket.
                (state.current.value() as f64, f64::INFINITY)
            };
            // Until the next gossip round the other nodes cannot see what this one admits, and
            // they may be admitting into the same room: take only this node's share of it
            // (the room as the others last saw it, split among the nodes counting in this
            // scope, so the share follows where the traffic is). The first admission of a
            // round is always within the share: at most one request per node and round
            // beyond the limit, and a limit smaller than the number of nodes never refuses a
            // client below it.
            let room_seen = rate.limit as f64 - (estimate - state.unsent as f64);
            let nodes = union(union(state.current.nodes(), state.previous.nodes()), [me].into_iter()).count() as f64;
            let share = room_seen / nodes - state.unsent as f64;
            // Quotas run over days or months: a gossip round's lag is negligible there, and
            // holding back a share would refuse requests before the quota is spent.
            let within_share = rate.period != Period::Second || share >= 1.0 || state.unsent == 0;
            let allowed = estimate + 1.0 <= rate.limit as f64 && tokens >= 1.0 && within_share;
            let decision = Decision {
                allowed,
                scope: index,
                limit: rate.limit,
                remaining: (rate.limit as f64 - estimate - 1.0).max(0.0) as u64,
                reset_secs: left_ms.div_ceil(1000).max(1),
            };
            // A request with one scope is counted under the lock it was decided under.
            if allowed && count && scopes.len() == 1 {
                state.count(me, now_unix_ms);
            }
            let tighter = match &tightest {
                None => true,
                Some(t) => match (t.allowed, decision.allowed) {
                    (true, false) => true,
                    (false, true) => false,
                    // Among refusals, name the smallest limit; among admissions, the least room.
                    (false, false) => decision.limit < t.limit,
                    (true, true) => decision.remaining < t.remaining,
                },
            };
            if tighter {
                tightest = Some(decision);
            }
        }
        let decision = tightest.unwrap_or(Decision { allowed: true, scope: 0, limit: 0, remaining: 0, reset_secs: 1 });
        if decision.allowed && count && scopes.len() > 1 {
            for (scope, _) in scopes {
                let mut shard = self.shard(scope).lock().unwrap_or_else(|p| p.into_inner());
                if let Some(state) = shard.get_mut(scope) {
                    state.count(me, now_unix_ms);
                }
            }
        }
        decision
    }

    fn entry<'s>(&self, shard: &'s mut Shard, scope: &Arc<str>, window: u64, now: Instant) -> &'s mut ScopeState {
        if shard.len() >= self.max_scopes_per_shard
            && !shard.contains_key(scope)
            && let Some(oldest) = shard.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone())
        {
            shard.remove(&oldest);
            self.evicted.increment(1);
        }
        shard.entry(scope.clone()).or_insert_with(|| ScopeState::new(window, now))
    }

    /// This node's slots of the scopes it counted since the last call (current and
    /// previous windows), for the next gossip round.
    pub fn take_deltas(&self) -> Vec<Observation> {
        let me = self.me.load(Ordering::Relaxed);
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (scope, state) in shard.iter_mut().filter(|(_, s)| s.dirty) {
                state.dirty = false;
                state.unsent = 0;
                out.push(Observation {
                    scope: scope.to_string(),
                    period: state.period,
                    window: state.window,
                    node: me,
                    value: state.current.slot(me),
                    span: state.current_spans.get(me).copied(),
                });
                if state.window > 0 {
                    out.push(Observation {
                        scope: scope.to_string(),
                        period: state.period,
                        window: state.window - 1,
                        node: me,
                        value: state.previous.slot(me),
                        span: state.previous_spans.get(me).copied(),
                    });
                }
            }
        }
        out
    }

    /// Every slot this node knows, for anti-entropy.
    pub fn snapshot(&self) -> Vec<Observation> {
        self.observations(|_| true)
    }

    /// Every slot of the quota scopes (day, week, month), to persist across restarts.
    pub fn quota_snapshot(&self) -> Vec<Observation> {
        self.observations(Period::is_calendar)
    }

    fn observations(&self, keep: impl Fn(Period) -> bool) -> Vec<Observation> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (scope, state) in shard.iter().filter(|(_, s)| keep(s.period)) {
                let recent = [
                    (&state.current, Some(&state.current_spans), state.window),
                    (&state.previous, Some(&state.previous_spans), state.window.saturating_sub(1)),
                ];
                let history = state.history.iter().map(|(w, c)| (c, None, *w));
                for (counter, spans, window) in recent.into_iter().chain(history) {
                    out.extend(counter.slots().map(|(node, value)| Observation {
                        scope: scope.to_string(),
                        period: state.period,
                        window,
                        node,
                        value,
                        span: spans.and_then(|s| s.get(node).copied()),
                    }));
                }
            }
        }
        out
    }

    /// Merges observations gossiped by node `from`.
    pub fn merge(&self, from: NodeId, observations: &[Observation]) {
        self.merge_at(from, observations, Instant::now());
    }

    fn merge_at(&self, from: NodeId, observations: &[Observation], now: Instant) {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).insert(from, now);
        self.restore_at(observations, now);
    }

    /// Merges observations read back from disk (nobody was heard from).
    pub fn restore(&self, observations: &[Observation]) {
        self.restore_at(observations, Instant::now());
    }

    fn restore_at(&self, observations: &[Observation], now: Instant) {
        for o in observations {
            let scope: Arc<str> = Arc::from(o.scope.as_str());
            let mut shard = self.shard(&scope).lock().unwrap_or_else(|p| p.into_inner());
            let state = self.entry(&mut shard, &scope, o.window, now);
            state.period = o.period;
            if o.window > state.window {
                state.rotate(o.window);
            }
            if o.window == state.window {
                if o.value >= state.current.slot(o.node) {
                    Self::observe_span(&mut state.current_spans, o);
                }
                state.current.observe(o.node, o.value);
            } else if o.window + 1 == state.window {
                if o.value >= state.previous.slot(o.node) {
                    Self::observe_span(&mut state.previous_spans, o);
                }
                state.previous.observe(o.node, o.value);
            } else if state.period.is_calendar() && o.window < state.window {
                state.history.entry(o.window).or_default().observe(o.node, o.value);
                while state.history.len() > HISTORY_WINDOWS {
                    state.history.pop_first();
                }
            }
        }
    }

    /// Keeps the span of the newest observation of a slot (the one with the highest count).
    fn observe_span(spans: &mut PerNode<Span>, o: &Observation) {
        if let Some(span) = o.span.filter(|s| s.first_ms <= s.last_ms) {
            spans.insert(o.node, span);
        }
    }

    /// Counts one event of `scope`, whose windows are `period` long, and returns the
    /// cluster-wide count over the sliding window ending now, this event included: the
    /// previous window's count in proportion to how much of it the sliding window still
    /// covers, plus the current one's. Events are counted whatever the count; the caller
    /// decides what too many means.
    pub fn record(&self, scope: &Arc<str>, period: Period, now_unix_ms: u64) -> f64 {
        self.sliding(scope, period, now_unix_ms, true)
    }

    /// [`Limiter::record`] without counting anything (`meridian explain`, and checks of
    /// counts that other events raise).
    pub fn sliding_count(&self, scope: &Arc<str>, period: Period, now_unix_ms: u64) -> f64 {
        self.sliding(scope, period, now_unix_ms, false)
    }

    fn sliding(&self, scope: &Arc<str>, period: Period, now_unix_ms: u64, count: bool) -> f64 {
        let me = self.me.load(Ordering::Relaxed);
        let (window, left_ms) = period.window(now_unix_ms);
        let length_ms = match period {
            Period::Seconds(n) => u64::from(n.max(1)) * 1000,
            _ => 1000,
        };
        let mut shard = self.shard(scope).lock().unwrap_or_else(|p| p.into_inner());
        if !count && !shard.contains_key(scope) {
            return 0.0;
        }
        let now = Instant::now();
        let state = self.entry(&mut shard, scope, window, now);
        state.period = period;
        state.rotate(window);
        if count {
            state.last_used = now;
            state.current.increment(me, 1);
            state.unsent += 1;
            state.dirty = true;
        }
        let covered = left_ms as f64 / length_ms as f64;
        state.previous.value() as f64 * covered + state.current.value() as f64
    }

    /// The cluster-wide count of `scope` in window `window`, if this node tracks it.
    pub fn count(&self, scope: &str, window: u64) -> Option<u64> {
        let shard = self.shard(scope).lock().unwrap_or_else(|p| p.into_inner());
        let state = shard.get(scope)?;
        Some(state.counter(window).map_or(0, GCounter::value))
    }

    /// Forgets every peer that is not in `members` (a node that left the cluster): its
    /// silence is no longer reported, and its last known rate is no longer held back for it.
    pub fn retain_peers(&self, members: &[NodeId]) {
        let gone: Vec<NodeId> = {
            let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            let gone = heard.keys().copied().filter(|n| !members.contains(n)).collect();
            heard.retain(|n, _| members.contains(n));
            gone
        };
        if gone.is_empty() {
            return;
        }
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for state in shard.values_mut() {
                state.last_rates.retain(|n| !gone.contains(&n));
            }
        }
    }

    /// How long ago each peer was last heard from (for `/metrics`).
    pub fn peer_silence(&self) -> Vec<(NodeId, Duration)> {
        self.peer_silence_at(Instant::now()).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_union_of_node_lists_is_their_sorted_distinct_nodes(
            a in proptest::collection::btree_set(0u64..12, 0..6),
            b in proptest::collection::btree_set(0u64..12, 0..6),
        ) {
            let merged: Vec<NodeId> = union(a.iter().copied(), b.iter().copied()).collect();
            let expected: Vec<NodeId> = a.union(&b).copied().collect();
            prop_assert_eq!(merged, expected);
        }
    }

    fn scope(name: &str, per_second: u64, burst: u64) -> Vec<(Arc<str>, Rate)> {
        vec![(Arc::from(name), Rate::per_second(per_second, burst))]
    }

    /// A gossiped slot of the rate scope `stage`: `node` admitted `value` in second `window`.
    fn second_slot(window: u64, node: NodeId, value: u64) -> Observation {
        Observation { scope: "stage".into(), period: Period::Second, window, node, value, span: None }
    }

    /// Admits `n` requests, with a gossip round (the deltas sent) after each.
    fn admitted(limiter: &Limiter, scopes: &[(Arc<str>, Rate)], now_ms: u64, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                let ok = limiter.admit(scopes, now_ms).allowed;
                limiter.take_deltas();
                ok
            })
            .count()
    }

    #[test]
    fn sliding_counts_add_up_across_nodes_and_fade_with_the_window() {
        let a = Limiter::new(1, 1000);
        let b = Limiter::new(2, 1000);
        let scope: Arc<str> = Arc::from("waf:api:flood:10.0.0.1");
        let minute = Period::Seconds(60);
        // At the start of a window: 3 events on a, 2 on b, then one gossip round each way.
        let start = 60_000 * 1000;
        for _ in 0..3 {
            a.record(&scope, minute, start);
        }
        for _ in 0..2 {
            b.record(&scope, minute, start + 10);
        }
        b.merge(1, &a.take_deltas());
        a.merge(2, &b.take_deltas());
        assert_eq!(a.sliding_count(&scope, minute, start + 20), 5.0);
        assert_eq!(b.record(&scope, minute, start + 20), 6.0);
        // Half-way through the next window, half of the previous one still counts.
        a.merge(2, &b.take_deltas());
        assert_eq!(a.sliding_count(&scope, minute, start + 90_000), 3.0);
        // Two windows on, nothing does; and looking never creates a scope.
        assert_eq!(a.sliding_count(&scope, minute, start + 120_000), 0.0);
        assert_eq!(a.sliding_count(&Arc::from("unseen"), minute, start), 0.0);
        assert_eq!(a.count("unseen", 0), None);
        // Windows of zero seconds count as one second, never a division by zero.
        assert_eq!(a.record(&Arc::from("zero"), Period::Seconds(0), start), 1.0);
    }

    #[test]
    fn a_single_node_admits_the_rate_per_second() {
        let limiter = Limiter::new(1, 1000);
        let s = scope("stage", 10, 10);
        let admitted = (0..50).filter(|_| limiter.admit(&s, 5_000_000).allowed).count();
        assert_eq!(admitted, 10);
        let refused = limiter.admit(&s, 5_000_000);
        assert!(!refused.allowed);
        assert_eq!(refused.limit, 10);
    }

    #[test]
    fn other_nodes_counts_take_the_room() {
        let a = Limiter::new(1, 1000);
        let s = scope("stage", 10, 10);
        a.merge(2, &[second_slot(5000, 2, 7)]);
        assert_eq!(admitted(&a, &s, 5_000_000, 50), 3);
    }

    #[test]
    fn a_silent_peer_is_assumed_to_keep_its_rate() {
        let a = Limiter::new(1, 1000);
        let s = scope("stage", 100, 100);
        // Peer 2 used 80 in the previous second and has been silent since.
        a.merge(2, &[second_slot(4999, 2, 80)]);
        a.heard.lock().unwrap().insert(2, Instant::now() - Duration::from_secs(5));
        // Half-way through the second: 80 × 0.5 (previous) + 80 × 0.5 (extrapolated) = 80,
        // so 20 of the 100 are left.
        assert_eq!(admitted(&a, &s, 5_000_500, 200), 20);
    }

    #[test]
    fn between_gossip_rounds_a_node_takes_only_its_share_of_the_room() {
        let a = Limiter::new(1, 1000);
        let s = scope("stage", 100, 100);
        // Three nodes count here; nobody has used anything yet.
        a.merge(2, &[second_slot(3000, 2, 0)]);
        a.merge(3, &[second_slot(3000, 3, 0)]);
        let before_gossip = (0..100).filter(|_| a.admit(&s, 3_000_000).allowed).count();
        assert!((33..=34).contains(&before_gossip), "{before_gossip}");
    }

    #[test]
    fn a_partitioned_peer_keeps_its_last_rate_for_good() {
        let a = Limiter::new(1, 1000);
        let s = scope("stage", 100, 100);
        // Peer 2 used 70 a second, then fell silent; many seconds later it still counts.
        a.merge(2, &[second_slot(7000, 2, 70)]);
        a.admit(&s, 7_001_000);
        a.admit(&s, 7_002_000);
        a.heard.lock().unwrap().insert(2, Instant::now() - Duration::from_secs(30));
        a.take_deltas();
        assert_eq!(admitted(&a, &s, 7_030_500, 200), 30, "70 of 100 stay reserved for the silent peer");
    }

    #[test]
    fn a_peer_that_left_is_forgotten() {
        let a = Limiter::new(1, 1000);
        let s = scope("stage", 100, 200);
        a.merge(2, &[second_slot(7000, 2, 70)]);
        a.admit(&s, 7_001_000);
        a.admit(&s, 7_002_000);
        a.heard.lock().unwrap().insert(2, Instant::now() - Duration::from_secs(30));
        a.take_deltas();
        a.retain_peers(&[1, 3]);
        assert!(a.peer_silence().is_empty(), "node 2 left: its silence is not reported");
        assert_eq!(admitted(&a, &s, 7_030_500, 200), 100, "nothing is held back for a node that left");
    }

    #[test]
    fn the_tightest_scope_decides_and_refusals_count_nowhere() {
        let limiter = Limiter::new(1, 1000);
        let scopes =
            vec![(Arc::from("wide"), Rate::per_second(100, 100)), (Arc::from("narrow"), Rate::per_second(2, 2))];
        let admitted = (0..10).filter(|_| limiter.admit(&scopes, 7_000_000).allowed).count();
        assert_eq!(admitted, 2);
        let wide = scope("wide", 100, 100);
        let left = (0..200).filter(|_| limiter.admit(&wide, 7_000_000).allowed).count();
        assert_eq!(left, 98, "refused requests must not use the wide scope's room");
    }

    #[test]
    fn gossip_round_trips_deltas_between_nodes() {
        let a = Limiter::new(1, 1000);
        let b = Limiter::new(2, 1000);
        let s = scope("stage", 10, 10);
        for _ in 0..6 {
            assert!(a.admit(&s, 9_000_000).allowed);
        }
        b.merge(1, &a.take_deltas());
        assert!(a.take_deltas().is_empty(), "deltas are sent once");
        assert_eq!(admitted(&b, &s, 9_000_000, 50), 4);
    }

    #[test]
    fn calendar_windows_have_utc_boundaries() {
        // 2026-11-25T09:00:00Z, a Wednesday.
        let now = 1_795_597_200_000;
        let (_, left) = Period::Day.window(now);
        assert_eq!(left, 15 * 3_600_000);
        let (_, left) = Period::Week.window(now);
        assert_eq!(left, 4 * 86_400_000 + 15 * 3_600_000, "until Monday 00:00");
        let (month, left) = Period::Month.window(now);
        assert_eq!(left, 5 * 86_400_000 + 15 * 3_600_000, "until December 1st");
        assert_eq!(month, 2026 * 12 + 10);
        assert_eq!(crate::observe::time::days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn a_quota_counts_its_period_without_sliding() {
        let limiter = Limiter::new(1, 100);
        let q = vec![(Arc::from("quota"), Rate::quota(3, Period::Day))];
        let now = 1_795_597_200_000;
        assert_eq!(admitted(&limiter, &q, now, 10), 3);
        let refused = limiter.admit(&q, now + 3_600_000);
        assert!(!refused.allowed, "still the same day");
        assert_eq!(refused.reset_secs, 14 * 3600);
        assert_eq!(admitted(&limiter, &q, now + 16 * 3_600_000, 10), 3, "a new day");
    }

    #[test]
    fn calendar_scopes_keep_their_history() {
        let limiter = Limiter::new(1, 100);
        let usage = vec![(Arc::from("usage"), Rate::quota(u64::MAX, Period::Day))];
        let day = |d: u64| d * 86_400_000 + 1000;
        assert_eq!(admitted(&limiter, &usage, day(100), 3), 3);
        assert_eq!(admitted(&limiter, &usage, day(101), 2), 2);
        assert_eq!(admitted(&limiter, &usage, day(105), 4), 4);
        assert_eq!(limiter.count("usage", 100), Some(3));
        assert_eq!(limiter.count("usage", 101), Some(2));
        assert_eq!(limiter.count("usage", 103), Some(0));
        assert_eq!(limiter.count("usage", 105), Some(4));
        // History travels with gossip and persistence.
        let other = Limiter::new(2, 100);
        other.restore(&limiter.quota_snapshot());
        assert_eq!(other.count("usage", 100), Some(3));
    }

    #[test]
    fn scopes_are_capped() {
        let limiter = Limiter::new(1, 16);
        for i in 0..1000 {
            limiter.admit(&scope(&format!("s{i}"), 10, 10), 1_000);
        }
        let total: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 16, "{total} scopes kept");
    }

    /// Nodes on one simulated clock, gossiping (deltas, or a heartbeat) every 50 ms.
    struct SimulatedCluster {
        nodes: Vec<Limiter>,
        base: Instant,
        gossiped_at: u64,
    }

    impl SimulatedCluster {
        const ROUND_MS: u64 = 50;

        fn new(nodes: u64, start_ms: u64) -> Self {
            let cluster = SimulatedCluster {
                nodes: (1..=nodes).map(|n| Limiter::new(n, 100)).collect(),
                base: Instant::now(),
                gossiped_at: start_ms,
            };
            cluster.gossip(start_ms);
            cluster
        }

        fn at(&self, ms: u64) -> Instant {
            self.at_us(ms * 1000)
        }

        fn at_us(&self, us: u64) -> Instant {
            self.base + Duration::from_micros(us)
        }

        fn gossip(&self, ms: u64) {
            for (from, limiter) in self.nodes.iter().enumerate() {
                let deltas = limiter.take_deltas();
                for (to, peer) in self.nodes.iter().enumerate() {
                    if to != from {
                        peer.merge_at(from as u64 + 1, &deltas, self.at(ms));
                    }
                }
            }
        }

        /// Runs the gossip rounds due by `ms`, then asks `node` to admit.
        fn admit(&mut self, node: usize, scopes: &[(Arc<str>, Rate)], ms: u64) -> bool {
            self.admit_us(node, scopes, ms * 1000)
        }

        /// The same at a time in microseconds: the buckets refill on that clock, so requests
        /// less than a millisecond apart are still as far apart as they were sent.
        fn admit_us(&mut self, node: usize, scopes: &[(Arc<str>, Rate)], us: u64) -> bool {
            let ms = us / 1000;
            while self.gossiped_at + Self::ROUND_MS <= ms {
                self.gossiped_at += Self::ROUND_MS;
                self.gossip(self.gossiped_at);
            }
            self.nodes[node].admit_at(scopes, ms, self.at_us(us), true).allowed
        }
    }

    /// A client sending `per_second` evenly spaced requests for `seconds`, to the node
    /// `pick(k)` for its k-th request; returns how many were refused.
    fn honest_client(
        nodes: u64,
        limit: u64,
        burst: u64,
        per_second: f64,
        seconds: u64,
        pick: impl Fn(u64) -> usize,
    ) -> u64 {
        let start = 1_000_000_000;
        let mut cluster = SimulatedCluster::new(nodes, start);
        let s = scope("route", limit, burst);
        let mut refused = 0;
        let requests = (per_second * seconds as f64) as u64;
        for k in 0..requests {
            // Microseconds: above 1,000 requests a second, rounding to milliseconds would
            // send two at once, more than a burst of one allows.
            let us = start * 1000 + (k as f64 * 1_000_000.0 / per_second) as u64;
            if !cluster.admit_us(pick(k), &s, us) {
                refused += 1;
            }
        }
        refused
    }

    #[test]
    fn a_client_well_below_a_small_limit_is_never_refused() {
        // The report: rate 2, burst 2, three nodes, one request every 1.5 s to one node
        // (5 of 10 refused); and rate 1 (9 of 10 refused).
        assert_eq!(honest_client(3, 2, 2, 1.0 / 1.5, 15, |_| 0), 0);
        assert_eq!(honest_client(3, 1, 1, 1.0 / 1.5, 15, |_| 0), 0);
        // A client just under a limit of one, on whichever node.
        assert_eq!(honest_client(9, 1, 1, 0.95, 20, |k| (k % 9) as usize), 0);
    }

    #[test]
    fn the_cluster_holds_a_limit_of_1000_under_three_times_the_load() {
        // Three nodes, 3,000 requests per second offered 70/20/10, gossip every 50 ms.
        let start = 2_000_000_000;
        let mut cluster = SimulatedCluster::new(3, start);
        let s = scope("stage", 1000, 1000);
        let mut per_second = BTreeMap::<u64, u64>::new();
        for k in 0..3000 * 10u64 {
            let ms = start + k / 3;
            let node = match k % 10 {
                0..7 => 0,
                7..9 => 1,
                _ => 2,
            };
            if cluster.admit(node, &s, ms) {
                *per_second.entry(ms / 1000).or_default() += 1;
            }
        }
        let steady: Vec<u64> = per_second.values().skip(1).copied().collect();
        let mean = steady.iter().sum::<u64>() as f64 / steady.len() as f64;
        assert!((950.0..=1050.0).contains(&mean), "admitted {mean} per second on average: {steady:?}");
        for admitted in steady {
            assert!((900..=1100).contains(&admitted), "a second admitted {admitted}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A single client below a limit is admitted, whatever the limit (1 to 10,000 per
        /// second) and the number of nodes (1 to 9): on one node up to 95 % of the limit,
        /// spread over every node in turn up to half of it.
        #[test]
        fn a_single_client_below_the_limit_is_always_admitted(
            limit in prop_oneof![1u64..=20, 1u64..=10_000],
            burst_share in 0.0f64..=1.0,
            nodes in 1u64..=9,
            load in 0.05f64..=0.95,
            spread in any::<bool>(),
        ) {
            let burst = ((limit as f64 * burst_share) as u64).max(1);
            let (per_second, refused) = if spread {
                let per_second = limit as f64 * load.min(0.5);
                (per_second, honest_client(nodes, limit, burst, per_second, 3, |k| (k % nodes) as usize))
            } else {
                let per_second = limit as f64 * load;
                (per_second, honest_client(nodes, limit, burst, per_second, 3, |_| 0))
            };
            prop_assert_eq!(refused, 0, "{} req/s against {} (burst {}) on {} nodes, spread: {}", per_second, limit, burst, nodes, spread);
        }

        /// With fresh counters on every node (instant gossip), the cluster never admits more
        /// than the rate plus the burst in any aligned second, however requests arrive.
        #[test]
        fn fresh_counters_never_admit_more_than_rate_plus_burst(
            rate in 1u64..50,
            burst in 1u64..50,
            arrivals in proptest::collection::vec((0u64..3, 0u64..3000), 1..400),
        ) {
            let nodes: Vec<Limiter> = (1..=3).map(|n| Limiter::new(n, 100)).collect();
            let s = scope("stage", rate, burst);
            let mut arrivals = arrivals;
            arrivals.sort_by_key(|(_, t)| *t);
            let mut per_second = BTreeMap::<u64, u64>::new();
            for (node, at_ms) in arrivals {
                let now = 42_000 + at_ms;
                if nodes[node as usize].admit(&s, now).allowed {
                    *per_second.entry(now / 1000).or_default() += 1;
                }
                // Instant gossip: everyone hears every delta.
                for from in 0..3 {
                    let deltas = nodes[from].take_deltas();
                    for (to, node) in nodes.iter().enumerate() {
                        if to != from {
                            node.merge(from as u64 + 1, &deltas);
                        }
                    }
                }
            }
            for (second, admitted) in per_second {
                prop_assert!(admitted <= rate + burst, "second {}: admitted {} at rate {} burst {}", second, admitted, rate, burst);
            }
        }
    }
}
