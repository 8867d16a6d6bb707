//! The intake: transactions peers pushed while the transaction optimiser is on wait in its
//! priority queue ([`crate::ai::Optimizer`]) and are validated here, a batch at a time,
//! highest class first. A batch is validated on one blocking thread; each transaction's
//! verdict scores its peer as a direct push would.

use std::sync::Arc;

use super::Service;

/// Drains the optimiser's queue until the node stops.
pub async fn run(svc: Arc<Service>) {
    loop {
        if svc.node.is_stopping() {
            return;
        }
        let woken = svc.node.ai().wake.notified();
        let batch = svc.node.ai().next_batch();
        if batch.is_empty() {
            // also wake now and then: aging and a turned-off module need no push
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), woken).await;
            continue;
        }
        let node = svc.node.clone();
        let verdicts = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|job| {
                    let result = node.accept_tx(job.tx.clone());
                    let outcome = result.as_ref().map_or_else(|e| e.reason(), |_| "accepted");
                    node.ai().validated(&job, outcome);
                    (job.peer, job.txid, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(verdicts) = verdicts else {
            tracing::error!("a batch of queued transactions panicked in validation");
            continue;
        };
        for (peer, txid, result) in verdicts {
            if let Some(peer) = peer {
                if let Err(e) = svc.tx_verdict(peer, txid, result) {
                    tracing::debug!("queued {e}");
                }
            }
        }
    }
}
