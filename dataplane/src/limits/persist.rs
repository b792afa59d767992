//! Quotas survive restarts: a member writes its quota counters (day, week and month scopes,
//! every node's slots it knows) to `<data_dir>/quotas.bin` every second and at shutdown, and
//! merges them back when it starts. Merging is a G-counter merge, so a file older than what
//! gossip has since brought in cannot lower a count. A SIGKILL loses at most the last second
//! of this node's own counting, which its peers usually still hold.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limiter::{Limiter, Observation, Period};

/// One saved slot: an observation of a quota scope (calendar windows have no span). The file
/// keeps this shape whatever gossip carries.
#[derive(Serialize, Deserialize)]
struct SavedCount {
    scope: String,
    period: Period,
    window: u64,
    node: crate::NodeId,
    value: u64,
}

/// Writes the quota counters to `path` (whole, then renamed).
pub fn save(limiter: &Limiter, path: &Path) -> std::io::Result<()> {
    let saved: Vec<SavedCount> = limiter
        .quota_snapshot()
        .into_iter()
        .map(|o| SavedCount { scope: o.scope, period: o.period, window: o.window, node: o.node, value: o.value })
        .collect();
    let bytes = bincode::serde::encode_to_vec(&saved, bincode::config::standard()).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// Merges the counters saved at `path` (a missing file is a first start; a damaged one is
/// reported and skipped, never fatal).
pub fn restore(limiter: &Limiter, path: &Path) -> usize {
    let Ok(bytes) = std::fs::read(path) else { return 0 };
    match bincode::serde::decode_from_slice::<Vec<SavedCount>, _>(&bytes, bincode::config::standard()) {
        Ok((saved, _)) => {
            let observations: Vec<Observation> = saved
                .into_iter()
                .map(|c| Observation {
                    scope: c.scope,
                    period: c.period,
                    window: c.window,
                    node: c.node,
                    value: c.value,
                    span: None,
                })
                .collect();
            limiter.restore(&observations);
            observations.len()
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "quota counters could not be read; starting from the cluster's");
            0
        }
    }
}

/// Saves the counters every second.
pub fn spawn(limiter: Arc<Limiter>, path: std::path::PathBuf) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (limiter, path) = (limiter.clone(), path.clone());
            let saved = tokio::task::spawn_blocking(move || save(&limiter, &path)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "quota counters could not be saved");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::limiter::{Period, Rate};

    #[test]
    fn quota_counts_survive_a_save_and_restore() {
        let dir = std::env::temp_dir().join(format!("meridian-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quotas.bin");
        let q = vec![(Arc::from("quota"), Rate::quota(5, Period::Month))];
        let now = 1_795_597_200_000;
        let before = Limiter::new(1, 100);
        for _ in 0..3 {
            assert!(before.admit(&q, now).allowed);
        }
        save(&before, &path).unwrap();
        let after = Limiter::new(1, 100);
        assert!(restore(&after, &path) > 0);
        let admitted = (0..10).filter(|_| after.admit(&q, now).allowed).count();
        assert_eq!(admitted, 2, "3 of 5 were used before the restart");
        std::fs::write(&path, b"not bincode").unwrap();
        assert_eq!(restore(&Limiter::new(1, 100), &path), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
