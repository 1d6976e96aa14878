//! The journal: the durable log of every envelope, its outbox and its HTTP API. Not built yet.

use thiserror::Error;

use crate::config::Config;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("the journal is not built yet")]
    NotBuilt,
}

pub fn run(_cfg: Config) -> Result<(), JournalError> {
    Err(JournalError::NotBuilt)
}
