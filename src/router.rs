//! The router: a supervisor forking single-threaded workers that route envelopes to WebSocket
//! subscribers. Not built yet (the router worker issue).

use thiserror::Error;

use crate::config::Config;

#[derive(Debug, Error)]
pub enum RouterError {
    #[error("the router is not built yet")]
    NotBuilt,
}

pub fn run(_cfg: Config) -> Result<(), RouterError> {
    Err(RouterError::NotBuilt)
}
