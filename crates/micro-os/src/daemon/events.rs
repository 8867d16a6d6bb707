//! The event stream: the store's events after a point, then new ones as they commit.
//!
//! Events are rows of the store, committed with the change they describe, so a stream
//! resumed after the last id a client saw misses nothing and repeats nothing, across a
//! daemon restart too. New ones are found by reading after the last id every
//! [`POLL`] (an indexed range read of the primary key; nothing to wake).

use std::sync::Arc;
use std::time::Duration;

use micro_os_api::action::EventStream;
use micro_os_api::types::{Event, EventsQuery};
use micro_os_api::ApiError;
use micro_os_store::{EventFilter, Store};
use tokio::sync::mpsc;

/// How often a following stream looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Events read at a time.
const BATCH: usize = 512;

pub fn stream(store: Arc<Store>, q: EventsQuery) -> Result<EventStream, ApiError> {
    let filter = EventFilter { kinds: q.kinds().map_err(ApiError::bad_request)?, object: q.object.clone() };
    let follow = q.follow.unwrap_or(true);
    let mut after = match q.since {
        Some(s) => s,
        None => tokio::task::block_in_place(|| store.events_tail_start(&filter, q.tail.unwrap_or(0) as usize))
            .map_err(internal)?,
    };
    let (tx, rx) = mpsc::channel::<Event>(BATCH);
    tokio::spawn(async move {
        loop {
            let batch = match tokio::task::block_in_place(|| store.events_after(after, &filter, BATCH)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(target: "micro_os::store", "event stream ends: {e}");
                    return;
                }
            };
            if batch.is_empty() {
                if !follow {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => continue,
                    _ = tx.closed() => return,
                }
            }
            for e in batch {
                after = e.seq;
                let ev = Event {
                    id: e.seq,
                    at: e.at,
                    kind: e.kind,
                    object_id: e.object_id,
                    name: e.name,
                    action: e.action,
                    detail: e.detail,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })))
}

fn internal(e: micro_os_store::Error) -> ApiError {
    ApiError::internal(format!("the store failed: {e}"))
}
