//! The idempotent workload (`retry-storm`): clients that send payments with an
//! `Idempotency-Key` and retry every timeout and error, and the payment service behind the
//! gateways, which counts how often each key reaches it.
//!
//! Each client region starts new payments at its share of the rate. A payment is retried
//! with the same key and body, each attempt through the next node of the cluster (its own
//! region's first), until one attempt is answered with a 2xx or the payment gives up. The
//! service is sometimes slower than the clients' attempt timeout, so retries arrive while the
//! first attempt is still in flight, on other nodes too. At the end, every key must have
//! reached the service at most once, and every key a client saw succeed exactly once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::ChaosCluster;
use crate::http;
use crate::seeded::Xorshift;

/// How a payment ended.
#[derive(Debug, Clone, Serialize)]
pub struct Payment {
    pub key: String,
    pub client_region: usize,
    pub started_at_s: f64,
    pub attempts: u32,
    /// The status of the attempt that succeeded.
    pub succeeded: Option<u16>,
    /// Attempts answered as replays (`Idempotent-Replayed: true`).
    pub replays: u32,
    /// What the attempts answered, in order (a status, or the client's error).
    pub answers: Vec<String>,
}

/// Deliveries per key, as the payment service counted them.
pub type Deliveries = Arc<Mutex<HashMap<String, u32>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the payment service on `ip`: it counts each request by its `Idempotency-Key` and
/// answers 201 after a delay drawn from the seed (up to `slowest`).
pub async fn service(
    ip: std::net::Ipv4Addr,
    seed: u64,
    slowest: Duration,
) -> std::io::Result<(SocketAddr, Deliveries)> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip.into(), 0)).await?;
    let addr = listener.local_addr()?;
    let deliveries: Deliveries = Arc::default();
    let counted = deliveries.clone();
    let random = Arc::new(Mutex::new(Xorshift::new(seed ^ 0x9e37_79b9_7f4a_7c15)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            let random = random.clone();
            tokio::spawn(async move {
                let mut connection = http::ServerConnection::new(stream);
                while let Ok(Some(request)) = connection.next_request().await {
                    let key = request.header("idempotency-key").unwrap_or("").to_string();
                    let n = {
                        let mut counted = lock(&counted);
                        let n = counted.entry(key.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let delay = Duration::from_millis(lock(&random).draw() % (slowest.as_millis() as u64 + 1));
                    tokio::time::sleep(delay).await;
                    let body = format!("{{\"payment\":\"{key}\",\"delivery\":{n}}}");
                    if connection.respond(201, "Created", &body).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, deliveries))
}

/// How the payment clients behave.
#[derive(Debug, Clone, Copy)]
pub struct PaymentLoad {
    /// New payments per second from this client region.
    pub rate: f64,
    pub attempt_timeout: Duration,
    /// A payment stops retrying after this long.
    pub give_up_after: Duration,
}

/// One client region's payments until `stop`; returns each payment's story once every
/// payment has succeeded or given up.
pub async fn clients(
    cluster: Arc<ChaosCluster>,
    region: usize,
    load: PaymentLoad,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Payment> {
    // The region's own nodes first, then the others: where a client's retries go in turn.
    let mut order = cluster.region_nodes(region);
    order.extend((0..cluster.nodes.len()).filter(|n| cluster.nodes[*n].region != region));
    let every = Duration::from_secs_f64(1.0 / load.rate.max(0.01));
    let mut tick = tokio::time::interval(every);
    let mut payments = tokio::task::JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        n += 1;
        let key = format!("pay-r{}-{n}", region + 1);
        let gateways: Vec<SocketAddr> = order.iter().map(|&node| cluster.links[region][node].gateway).collect();
        payments.spawn(pay(key, region, gateways, load, started));
    }
    let mut done = Vec::new();
    while let Some(payment) = payments.join_next().await {
        if let Ok(payment) = payment {
            done.push(payment);
        }
    }
    done
}

/// One payment: attempts until a 2xx, each through the next gateway.
async fn pay(key: String, region: usize, gateways: Vec<SocketAddr>, load: PaymentLoad, started: Instant) -> Payment {
    let began = Instant::now();
    let body = format!("{{\"payment\":\"{key}\",\"amount\":10}}");
    let mut payment = Payment {
        key: key.clone(),
        client_region: region,
        started_at_s: started.elapsed().as_secs_f64(),
        attempts: 0,
        succeeded: None,
        replays: 0,
        answers: Vec::new(),
    };
    while began.elapsed() < load.give_up_after {
        let gateway = gateways[payment.attempts as usize % gateways.len()];
        payment.attempts += 1;
        let headers = [("idempotency-key", key.as_str()), ("content-type", "application/json")];
        match http::call(gateway, "POST", "/prod/pay", &headers, &body, load.attempt_timeout).await {
            Ok(response) if (200..300).contains(&response.status) => {
                if response.replayed {
                    payment.replays += 1;
                }
                payment.answers.push(response.status.to_string());
                payment.succeeded = Some(response.status);
                return payment;
            }
            Ok(response) => payment.answers.push(response.status.to_string()),
            Err(e) => payment.answers.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    payment
}
