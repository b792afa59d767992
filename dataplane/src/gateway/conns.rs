//! The node's client connections: the connection cap, the per-client limit, and shedding.
//!
//! A cap alone lets a few hundred silent sockets lock every real client out. So the table
//! knows, for every open connection, whether a request is in progress and since when it
//! has been idle. When a new connection arrives at the cap, the connection that has been
//! idle the longest (a keep-alive connection between requests, or one that never sent a
//! request) is asked to close gracefully (HTTP/1.1: after its current exchange; HTTP/2:
//! GOAWAY), and the new one takes its place. Only when every connection is busy does a new
//! one wait in the kernel's backlog. The per-client limit works the same way within one
//! address: a client at its limit sheds its own longest-idle connection, and is refused
//! only when all of its connections are busy. Connections that never send a request head are also
//! closed after `header_read_timeout` by [`super::io::IdleTimeout`].
//!
//! Requests mark their connection busy through a [`RequestGuard`]; the table keeps only an
//! `Arc` per connection and takes its lock on accept, close and shed, never per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use meridian_dns::net::{ClientConnection, ConnectionsPerClient};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::coarse_time::CoarseInstant;

/// How often a connection waiting at the cap looks again for an idle one to shed.
const SHED_RETRY: Duration = Duration::from_millis(50);

/// All client connections of one node (or of its admin listener).
#[derive(Debug)]
pub struct ConnectionTable {
    permits: Arc<Semaphore>,
    per_client: Option<ConnectionsPerClient>,
    open: Mutex<HashMap<u64, Arc<ConnSlot>>>,
    next_id: AtomicU64,
    /// Signalled when the last connection closes (for draining).
    emptied: Notify,
}

/// One open connection as the table sees it.
#[derive(Debug)]
pub struct ConnSlot {
    id: u64,
    client: IpAddr,
    active: AtomicU32,
    /// When the connection last became idle ([`CoarseInstant::as_millis`]: which connection
    /// has been idle longest is a matter of seconds, and every request stamps it).
    idle_since: AtomicU64,
    served: AtomicBool,
    /// Asked to close already (not picked twice).
    shedding: AtomicBool,
    /// Wakes the connection's task when it is asked to close ([`ConnSlot::poll_shed`]).
    asked: AtomicWaker,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client address already holds `max_connections_per_client` busy connections.
    PerClient,
    /// The table is gone (the node is shutting down).
    Closed,
}

/// A connection's place in the table; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    pub slot: Arc<ConnSlot>,
    table: Arc<ConnectionTable>,
    _permit: OwnedSemaphorePermit,
    _client: Option<ClientConnection>,
}

/// Marks a connection busy while a request is being served.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnSlot>);

impl ConnectionTable {
    /// A table for `max` connections, at most `per_client` from one address (0: no limit).
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(ConnectionTable {
            permits: Arc::new(Semaphore::new(max)),
            per_client: (per_client > 0).then(|| ConnectionsPerClient::new(per_client)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            emptied: Notify::new(),
        })
    }

    /// Admits a connection from `client`: at the cap, sheds the longest-idle connection and
    /// waits for a place.
    pub async fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Refused> {
        let counted = match &self.per_client {
            Some(limit) => match limit.open(client) {
                Some(counted) => Some(counted),
                None if self.shed_longest_idle(Some(client)) => Some(limit.open_past_limit(client)),
                None => return Err(Refused::PerClient),
            },
            None => None,
        };
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.place_at_the_cap().await?,
        };
        Ok(self.register(client, permit, counted))
    }

    /// Waits for a place at the cap, shedding the longest-idle connection whenever one is.
    async fn place_at_the_cap(&self) -> Result<OwnedSemaphorePermit, Refused> {
        loop {
            // A connection that was busy may have become idle since the last look.
            self.shed_longest_idle(None);
            match tokio::time::timeout(SHED_RETRY, self.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(_)) => return Err(Refused::Closed),
                Err(_) => continue,
            }
        }
    }

    fn register(
        self: &Arc<Self>,
        client: IpAddr,
        permit: OwnedSemaphorePermit,
        counted: Option<ClientConnection>,
    ) -> Admitted {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(ConnSlot {
            id,
            client,
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(CoarseInstant::now().as_millis()),
            served: AtomicBool::new(false),
            shedding: AtomicBool::new(false),
            asked: AtomicWaker::new(),
        });
        self.lock().insert(id, slot.clone());
        Admitted { slot, table: self.clone(), _permit: permit, _client: counted }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnSlot>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the connection idle the longest (of `client`, or of all) to close; false when
    /// every one is busy.
    fn shed_longest_idle(&self, client: Option<IpAddr>) -> bool {
        let victim = self
            .lock()
            .values()
            .filter(|s| client.is_none_or(|c| s.client == c))
            .filter(|s| s.active.load(Ordering::Acquire) == 0 && !s.shedding.load(Ordering::Relaxed))
            .min_by_key(|s| s.idle_since.load(Ordering::Relaxed))
            .cloned();
        match victim {
            Some(slot) => {
                metrics::counter!("meridian_connections_shed_total").increment(1);
                slot.ask_to_close();
                true
            }
            None => false,
        }
    }

    /// Asks every connection to close (the node is stopping): those serving a request after
    /// it, parked ones at once.
    pub fn close_all(&self) {
        for slot in self.lock().values() {
            slot.ask_to_close();
        }
    }

    /// Waits until every connection has closed, or `limit` passed; false on the limit.
    pub async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let emptied = self.emptied.notified();
                if self.lock().is_empty() {
                    return;
                }
                emptied.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        open.remove(&self.slot.id);
        if open.is_empty() {
            self.table.emptied.notify_waiters();
        }
    }
}

impl ConnSlot {
    /// Marks the connection busy until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.served.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Whether a request head has arrived on this connection.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Whether the table has asked this connection to close.
    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Acquire)
    }

    /// Resolves when the table asks this connection to close.
    pub async fn shed_requested(&self) {
        std::future::poll_fn(|cx| self.poll_shed(cx)).await
    }

    /// Ready once the table has asked this connection to close. A parked connection polls
    /// this beside its socket instead of holding a [`ConnSlot::shed_requested`] future. Only
    /// the connection's own task waits on its slot, so one waker is enough.
    pub fn poll_shed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.asked.register(cx.waker());
        if self.shedding.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }

    fn ask_to_close(&self) {
        self.shedding.store(true, Ordering::Release);
        self.asked.wake();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let slot = &self.0;
        slot.idle_since.store(CoarseInstant::now().as_millis(), Ordering::Relaxed);
        slot.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_shed() {
        let table = ConnectionTable::new(2, 0);
        let old = table.admit(ip(1)).await.unwrap();
        // Longer than the idle stamps' clock tick (`CoarseInstant`).
        tokio::time::sleep(Duration::from_millis(25)).await;
        let busy = table.admit(ip(2)).await.unwrap();
        let _request = busy.slot.begin();
        // The third connection sheds the idle one (not the busy one) and takes its place
        // once it has closed.
        let slot = old.slot.clone();
        let closer = tokio::spawn(async move {
            slot.shed_requested().await;
            drop(old);
        });
        let third = tokio::time::timeout(Duration::from_secs(1), table.admit(ip(3))).await;
        assert!(third.is_ok(), "the new connection did not get a place");
        closer.await.unwrap();
        let asked = tokio::time::timeout(Duration::from_millis(20), busy.slot.shed_requested()).await;
        assert!(asked.is_err(), "the busy connection was asked to close");
    }

    #[tokio::test]
    async fn a_client_at_its_limit_sheds_its_own_idle_connection_or_is_refused() {
        let table = ConnectionTable::new(10, 2);
        // Longer than the idle stamps' clock tick (`CoarseInstant`).
        let tick = || tokio::time::sleep(Duration::from_millis(25));
        let other = table.admit(ip(2)).await.unwrap();
        tick().await;
        let a = table.admit(ip(1)).await.unwrap();
        tick().await;
        let b = table.admit(ip(1)).await.unwrap();
        // Both of ip(1)'s connections are idle: the older one is asked to close, not the
        // older connection of ip(2).
        let c = table.admit(ip(1)).await.unwrap();
        let asked = |slot: Arc<ConnSlot>| async move {
            tokio::time::timeout(Duration::from_millis(20), slot.shed_requested()).await.is_ok()
        };
        assert!(asked(a.slot.clone()).await);
        assert!(!asked(other.slot.clone()).await);
        // All of ip(1)'s connections busy (a is closing): the next one is refused.
        let _busy = (b.slot.begin(), c.slot.begin());
        assert_eq!(table.admit(ip(1)).await.unwrap_err(), Refused::PerClient);
        assert!(table.admit(ip(3)).await.is_ok(), "other clients are not affected");
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_connection() {
        let table = ConnectionTable::new(4, 0);
        let a = table.admit(ip(1)).await.unwrap();
        assert!(!table.drained(Duration::from_millis(20)).await);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(a);
        });
        assert!(table.drained(Duration::from_secs(1)).await);
    }
}
