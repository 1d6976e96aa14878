//! Metric names, in one place (docs/metrics.md explains each).
//!
//! Rules: counters end in `_total`, histograms in `_seconds` or `_bytes` and are real
//! histograms (not summaries) so workers sum; labels are low-cardinality enums (`reason`,
//! `worker`), never a topic, user or connection id.

/// Open WebSocket connections (gauge).
pub const CONNECTIONS: &str = "switchboard_connections";
/// Connections accepted (counter).
pub const CONNECTIONS_ACCEPTED: &str = "switchboard_connections_accepted_total";
/// Connections refused before or at the upgrade, by `reason` (counter).
pub const CONNECTIONS_REFUSED: &str = "switchboard_connections_refused_total";
/// Connections closed, by `reason` (counter).
pub const CLOSES: &str = "switchboard_closes_total";
/// Active subscriptions (gauge).
pub const SUBSCRIPTIONS: &str = "switchboard_subscriptions";
/// Topics with at least one local subscriber (gauge).
pub const TOPICS: &str = "switchboard_topics";
/// Envelopes received from the bus (counter).
pub const ENVELOPES_RECEIVED: &str = "switchboard_envelopes_received_total";
/// Envelopes received for a topic without local subscriber (counter).
pub const ENVELOPES_UNROUTED: &str = "switchboard_envelopes_unrouted_total";
/// Envelope frames queued to clients (counter).
pub const DELIVERIES: &str = "switchboard_deliveries_total";
/// Bytes written to clients (counter).
pub const BYTES_OUT: &str = "switchboard_bytes_out_total";
/// Envelopes dropped for a client, by `reason` (counter).
pub const DROPS: &str = "switchboard_drops_total";
/// Gap frames sent (counter).
pub const GAPS: &str = "switchboard_gaps_total";
/// Resync frames sent (counter).
pub const RESYNCS: &str = "switchboard_resyncs_total";
/// Token rejections, by `reason` (the token error code) (counter).
pub const TOKEN_REJECTIONS: &str = "switchboard_token_rejections_total";
/// Client frames rejected, by `reason` (the error code) (counter).
pub const FRAMES_REJECTED: &str = "switchboard_frames_rejected_total";
/// Client frames received (counter).
pub const FRAMES_IN: &str = "switchboard_frames_in_total";
/// Bus connection up (1) or down (0) (gauge).
pub const BUS_CONNECTED: &str = "switchboard_bus_connected";
/// Bus reconnects (counter).
pub const BUS_RECONNECTS: &str = "switchboard_bus_reconnects_total";
/// Bus messages that could not be routed (no valid topic or seq, bad frame size), by `reason`
/// (`topic`, `seq`, `frame`); acked and dropped (counter).
pub const BUS_INVALID: &str = "switchboard_bus_invalid_total";
/// Bucket routing: messages whose routing key is not their topic's bucket, i.e. a publisher
/// with another bucket count; delivered anyway (counter).
pub const BUS_MISROUTED: &str = "switchboard_bus_misrouted_total";
/// Bucket routing: buckets this worker's queue is bound to (gauge).
pub const BUS_BUCKETS_BOUND: &str = "switchboard_bus_buckets_bound";
/// Envelopes the broker confirmed to a publisher (counter).
pub const BUS_PUBLISHED: &str = "switchboard_bus_published_total";
/// Failed publish calls, by `reason` (`unreachable`, `access_refused`, `closed`, `nack`,
/// `timeout`, `other`) (counter).
pub const BUS_PUBLISH_ERRORS: &str = "switchboard_bus_publish_errors_total";
/// Envelopes seen at ingress with a seq not above the last one for their topic (counter).
pub const BUS_SEQ_ANOMALIES: &str = "switchboard_bus_seq_anomalies_total";
/// Envelope `ts` to the write to the client socket (histogram).
pub const DELIVERY_LATENCY: &str = "switchboard_delivery_latency_seconds";
/// Time a worker spends routing one envelope into every local subscriber's queue (histogram).
pub const ROUTE_SECONDS: &str = "switchboard_route_seconds";
/// Worker processes respawned by the supervisor, by `worker` (counter; from the supervisor).
pub const WORKER_RESTARTS: &str = "switchboard_worker_restarts_total";
/// Worker processes the supervisor keeps running (gauge; from the supervisor).
pub const WORKERS: &str = "switchboard_workers";
/// A worker is running and has reported ready (1) or not (0), by `worker` (gauge; from the
/// supervisor).
pub const WORKER_UP: &str = "switchboard_worker_up";
/// The supervisor is shutting down (1) or not (0) (gauge; from the supervisor).
pub const SUPERVISOR_STOPPING: &str = "switchboard_supervisor_stopping";
/// Worker metrics sockets the admin endpoint could not read during a scrape, by `worker`
/// (counter; from the admin process).
pub const ADMIN_SCRAPE_ERRORS: &str = "switchboard_admin_scrape_errors_total";
/// SIGHUP reloads a worker carried out, by `result` (`ok`, `error`) (counter).
pub const CONFIG_RELOADS: &str = "switchboard_config_reloads_total";
/// Journal appends (counter).
pub const JOURNAL_APPENDS: &str = "switchboard_journal_appends_total";
/// Envelopes stored but not yet confirmed by the bus (gauge).
pub const OUTBOX_PENDING: &str = "switchboard_outbox_pending";
/// Outbox publish attempts that failed and will be retried (counter).
pub const OUTBOX_RETRIES: &str = "switchboard_outbox_retries_total";
/// Envelopes removed by retention (counter).
pub const JOURNAL_PRUNED: &str = "switchboard_journal_pruned_total";
/// Envelopes the outbox published to the bus (counter).
pub const OUTBOX_PUBLISHED: &str = "switchboard_outbox_published_total";
/// Whether this process holds the outbox lease (1) or stands by (0) (gauge).
pub const OUTBOX_LEADER: &str = "switchboard_outbox_leader";
/// Reconciliation reads served (counter).
pub const JOURNAL_READS: &str = "switchboard_journal_reads_total";
/// Journal HTTP requests refused, by `reason` (counter).
pub const JOURNAL_REJECTIONS: &str = "switchboard_journal_rejections_total";
