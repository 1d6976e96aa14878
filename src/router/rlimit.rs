//! Raising RLIMIT_NOFILE: every WebSocket is a file descriptor, and Rust (unlike Go) does not
//! raise the soft limit by itself.
//!
//! Called once in the supervisor before the first fork, so every worker inherits the raised
//! limit. The hard limit is the ceiling (systemd's `LimitNOFILE=`, itself capped by
//! `fs.nr_open`); only root could go above it.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The limit before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Sets the soft RLIMIT_NOFILE to the hard one.
pub fn raise_nofile() -> nix::Result<NofileLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileLimit { soft_before: soft, soft: now, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_reaches_hard() {
        let l = raise_nofile().unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.soft >= l.soft_before);
    }
}
