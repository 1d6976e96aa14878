//! The local bus: application processes on this host write to each worker's Unix socket.
//!
//! Each worker listens on `<dir>/worker-<index>.sock`; a publisher connects to every socket it
//! finds and writes each record to each (the fan-out happens at the publisher, so workers
//! share nothing). Records are length-prefixed (`wire::routed`). A worker that is down simply
//! misses envelopes: its clients reconnect elsewhere and reconcile through the journal.
//!
//! Trust: the socket directory's permissions decide who may publish (mode 0700 by default).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::{BusError, Ingress, Routed};
use crate::wire::routed::Routed as Record;

/// The socket path of worker `index`.
pub fn socket_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("worker-{index}.sock"))
}

/// A worker's listening side. Dropping it stops accepting and removes the socket.
pub struct Consumer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Consumer {
    /// Binds the socket (replacing a stale one left by a dead worker) and starts accepting.
    pub fn start(dir: &Path, index: usize, ingress: Rc<dyn Ingress>) -> Result<Self, BusError> {
        std::fs::create_dir_all(dir)?;
        // Only the owner may publish unless the operator widens it.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let path = socket_path(dir, index);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        ingress.bus_state(true);
        let task = tokio::task::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::task::spawn_local(read_records(stream, ingress.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "local bus accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Self { path, task })
    }
}

/// Reads records from one publisher until it hangs up or sends something invalid.
async fn read_records(mut stream: UnixStream, ingress: Rc<dyn Ingress>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match Record::decode_prefix(&buf) {
                Ok(Some((rec, used))) => {
                    let (topic, seq, start) = (rec.topic.to_owned(), rec.seq, used - rec.frame.len());
                    // One copy from the kernel into `buf`, then the frame is a shared slice.
                    let whole = buf.split_to(used).freeze();
                    ingress.deliver(&topic, seq, whole.slice(start..));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "local bus: invalid record, dropping the publisher");
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The application side: one connection per live worker socket, reopened as needed.
pub struct Publisher {
    dir: PathBuf,
    conns: BTreeMap<PathBuf, UnixStream>,
    scratch: Vec<u8>,
}

impl Publisher {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), conns: BTreeMap::new(), scratch: Vec::new() }
    }

    fn sockets(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return vec![] };
        let mut v: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("worker-") && n.ends_with(".sock"))
            })
            .collect();
        v.sort();
        v
    }

    /// Writes the batch to every live worker. A worker that is gone is skipped (it has no
    /// clients to deliver to); the result is how many workers took the batch.
    pub async fn publish_counted(&mut self, batch: &[Routed]) -> Result<usize, BusError> {
        self.scratch.clear();
        for r in batch {
            Record { topic: &r.topic, seq: r.seq, frame: &r.frame }.encode_into(&mut self.scratch);
        }
        let mut reached = 0;
        for path in self.sockets() {
            // Try the cached connection, then one fresh one: a respawned worker rebinds the path.
            for attempt in 0..2 {
                if attempt == 1 || !self.conns.contains_key(&path) {
                    match UnixStream::connect(&path).await {
                        Ok(s) => {
                            self.conns.insert(path.clone(), s);
                        }
                        Err(_) => {
                            self.conns.remove(&path);
                            break;
                        }
                    }
                }
                let Some(conn) = self.conns.get_mut(&path) else { break };
                if conn.write_all(&self.scratch).await.is_ok() {
                    reached += 1;
                    break;
                }
                self.conns.remove(&path);
            }
        }
        Ok(reached)
    }

    pub async fn publish(&mut self, batch: &[Routed]) -> Result<(), BusError> {
        self.publish_counted(batch).await.map(|_| ())
    }
}

/// Test double of a worker: records what arrives.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder {
    pub got: std::cell::RefCell<Vec<(String, u64, bytes::Bytes)>>,
    pub states: std::cell::RefCell<Vec<bool>>,
}

#[cfg(test)]
impl Ingress for Recorder {
    fn deliver(&self, topic: &str, seq: u64, frame: bytes::Bytes) {
        self.got.borrow_mut().push((topic.to_owned(), seq, frame));
    }
    fn bus_state(&self, up: bool) {
        self.states.borrow_mut().push(up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_for(r: &Recorder, n: usize) {
        for _ in 0..400 {
            if r.got.borrow().len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn publisher_reaches_every_worker_in_order() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let a = Rc::new(Recorder::default());
                let b = Rc::new(Recorder::default());
                let _ca = Consumer::start(dir.path(), 0, a.clone()).unwrap();
                let cb = Consumer::start(dir.path(), 1, b.clone()).unwrap();
                let mut p = Publisher::new(dir.path());
                let batch: Vec<Routed> = (1..=100)
                    .map(|i| Routed {
                        topic: "t:1".into(),
                        seq: i,
                        frame: bytes::Bytes::from(vec![0x91, 0x13, i as u8]),
                    })
                    .collect();
                assert_eq!(p.publish_counted(&batch[..50]).await.unwrap(), 2);
                wait_for(&b, 50).await;
                drop(cb); // worker 1 goes away: publishing carries on to worker 0
                assert_eq!(p.publish_counted(&batch[50..]).await.unwrap(), 1);
                wait_for(&a, 100).await;
                let got = a.got.borrow();
                assert_eq!(got.len(), 100);
                assert!(
                    got.iter()
                        .enumerate()
                        .all(|(i, (t, s, f))| t == "t:1" && *s == i as u64 + 1 && f[2] == (i + 1) as u8)
                );
                assert_eq!(b.got.borrow().len(), 50, "worker 1 got {}", b.got.borrow().len());
            })
            .await;
    }
}
