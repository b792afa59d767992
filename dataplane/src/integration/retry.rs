//! Retry budgets: retries may add at most a set share of a route's traffic.
//!
//! Every first attempt deposits `percent / 100` of a token; every retry withdraws a whole
//! one. While an upstream is healthy the budget fills (up to a cap); during an outage
//! retries stop once it is spent, so a failing upstream sees at most `1 + percent/100`
//! times its normal load instead of `1 + attempts` times.

use std::sync::atomic::{AtomicI64, Ordering};

/// Milli-tokens in a full retry.
const TOKEN: i64 = 1000;
/// Retries allowed in a burst before the budget must be earned back.
const CAP: i64 = 10 * TOKEN;

/// A route's retry policy and its budget.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    deposit: i64,
    balance: AtomicI64,
}

impl RetryPolicy {
    pub fn new(attempts: u32, budget_percent: u32) -> Self {
        RetryPolicy { attempts, deposit: i64::from(budget_percent) * TOKEN / 100, balance: AtomicI64::new(TOKEN) }
    }

    /// Called once per request (first attempt).
    pub fn deposit(&self) {
        let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + self.deposit).min(CAP)));
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b >= TOKEN).then_some(b - TOKEN)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let policy = RetryPolicy::new(3, 20);
        let mut retries = 0;
        for _ in 0..1000 {
            policy.deposit();
            while policy.try_withdraw() {
                retries += 1;
            }
        }
        // One token to start with, then 20 % of 1000 requests.
        assert_eq!(retries, 201);
    }

    #[test]
    fn cap_bounds_a_burst() {
        let policy = RetryPolicy::new(1, 100);
        for _ in 0..100 {
            policy.deposit();
        }
        let mut burst = 0;
        while policy.try_withdraw() {
            burst += 1;
        }
        assert_eq!(burst, 10);
    }
}
