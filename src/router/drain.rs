//! Graceful drain: close every client with 1001, spread evenly over a window, within a grace.
//!
//! Clients told "going away" at the same instant would all reconnect at the same instant,
//! onto the workers that remain; spreading the closes over `drain_window_secs` turns the
//! reconnect storm into a steady trickle. The listener is closed before this starts (see
//! `Running::run`), and whatever is still open at `shutdown_grace_secs` is cut.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::worker::{Control, Worker};
use crate::wire::CloseCode;

/// How often the drain closes the next share of clients.
const TICK: Duration = Duration::from_millis(10);

/// The number of clients to have closed `elapsed` into a `window` over `total` clients.
pub fn due(total: usize, elapsed: Duration, window: Duration) -> usize {
    if window.is_zero() || elapsed >= window {
        return total;
    }
    // Start with the first client at once; the last one closes at the end of the window.
    ((total as u128 * elapsed.as_nanos()) / window.as_nanos()) as usize + 1
}

/// Drains `worker`: closes its clients over `window`, waits for them until `grace`. A
/// `Stop` received meanwhile closes the rest at once.
pub async fn drain(worker: &Worker, window: Duration, grace: Duration, control: &mut mpsc::Receiver<Control>) {
    let start = Instant::now();
    let sessions = worker.sessions_snapshot();
    let total = sessions.len();
    let mut closed = 0;
    let mut tick = tokio::time::interval(TICK);
    while closed < total {
        tokio::select! {
            _ = tick.tick() => {}
            c = control.recv() => match c {
                Some(Control::Stop) | None => { worker.stop_all_now(); break; }
                Some(other) => tracing::warn!(?other, "ignored while draining"),
            }
        }
        let target = due(total, start.elapsed(), window).min(total);
        for s in &sessions[closed..target] {
            s.conn.close(CloseCode::GOING_AWAY, "server draining: reconnect", false);
        }
        closed = target;
    }
    // Connections admitted while the listener was closing were not in the snapshot.
    worker.close_all_gently();
    wait_empty(worker, grace.saturating_sub(start.elapsed())).await;
    if worker.connections() > 0 {
        tracing::warn!(left = worker.connections(), "grace period over: cutting the rest");
    }
}

/// Waits until the worker has no connection left, or `limit` passed.
pub async fn wait_empty(worker: &Worker, limit: Duration) {
    let end = Instant::now() + limit;
    while worker.connections() > 0 && Instant::now() < end {
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_evenly() {
        let w = Duration::from_secs(10);
        assert_eq!(due(100, Duration::ZERO, w), 1);
        assert_eq!(due(100, Duration::from_secs(5), w), 51);
        assert_eq!(due(100, Duration::from_secs(10), w), 100);
        assert_eq!(due(3, Duration::from_secs(1), Duration::ZERO), 3);
    }
}
