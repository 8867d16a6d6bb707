//! The accept loop: hyper's HTTP/1 server with the limits that keep one client from
//! starving the others — a deadline for a request's headers (slowloris), an idle deadline
//! between a body's chunks, and caps on open connections, per client address and in
//! all. A connection over a cap is closed at once (and counted), so the daemon keeps
//! its descriptors for everyone else.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How much of the daemon one client may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServeLimits {
    /// A request's headers must arrive within this (a slow client's connection is closed).
    pub header_timeout: Duration,
    /// A body that sends nothing for this long is cut (the request fails, the connection closes).
    pub body_idle_timeout: Duration,
    /// Open connections from one address.
    pub per_client: usize,
    /// Open connections in all.
    pub total: usize,
    /// How long open connections (streams that follow) get to finish at shutdown.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            per_client: 256,
            total: 2048,
            drain: Duration::from_secs(2),
        }
    }
}

/// Connections refused at the caps since the start (shown in the API's health reason).
#[derive(Debug, Default)]
pub struct ServeStats {
    pub refused_per_client: AtomicU64,
    pub refused_total: AtomicU64,
}

/// The open connections, by client address.
#[derive(Default)]
struct Open {
    by_client: HashMap<IpAddr, usize>,
    total: usize,
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &ServeLimits, stats: &ServeStats) -> Option<Slot> {
        let mut o = open.lock().expect("the connection table is never poisoned");
        if o.total >= limits.total {
            stats.refused_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = o.by_client.entry(ip).or_default();
        if *n >= limits.per_client {
            stats.refused_per_client.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        o.total += 1;
        Some(Slot { open: open.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().expect("the connection table is never poisoned");
        o.total -= 1;
        if let Some(n) = o.by_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.by_client.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections
/// finish for `limits.drain`. Requests carry `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    stats: Arc<ServeStats>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_idle_timeout));
    let open = Arc::new(Mutex::new(Open::default()));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of descriptors, or a connection reset before it was taken: go on
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = Slot::take(&open, addr.ip(), &limits, &stats) else {
            tracing::debug!("refused a connection from {addr}: over the connection limit");
            continue; // dropping the stream closes it
        };
        // small responses (a stream's last chunk) must not wait for a delayed ACK
        let _ = tcp.set_nodelay(true);
        let svc = app.clone().map_request(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
            req
        });
        let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {addr}: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::info!("closed the streams still open");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_client_and_in_all_and_freed_on_drop() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = ServeLimits { per_client: 2, total: 3, ..ServeLimits::default() };
        let stats = ServeStats::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let a1 = Slot::take(&open, a, &limits, &stats).unwrap();
        let _a2 = Slot::take(&open, a, &limits, &stats).unwrap();
        assert!(Slot::take(&open, a, &limits, &stats).is_none(), "a third from one client");
        let _b1 = Slot::take(&open, b, &limits, &stats).unwrap();
        assert!(Slot::take(&open, b, &limits, &stats).is_none(), "a fourth in all");
        assert_eq!(stats.refused_per_client.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused_total.load(Ordering::Relaxed), 1);
        drop(a1);
        assert!(Slot::take(&open, b, &limits, &stats).is_some(), "a freed place is taken again");
    }
}
