//! Bucket routing: which topic bucket an envelope travels in, and which buckets a worker wants.
//!
//! In `routing = "buckets"` the publisher sends each envelope to the direct exchange
//! `<exchange>.buckets` with the routing key `bucket(topic)` in decimal, and a worker binds its
//! queue only to the buckets its local subscribers need, so its cost grows with its interest
//! instead of with all traffic. The hash is part of the contract (docs/rabbitmq.md): FNV-1a
//! 32-bit over the topic's bytes, reduced with `% buckets`, so a PHP or Node publisher computes
//! the same bucket with a few lines of integer arithmetic.
//!
//! [`Interest`] is the worker-side bookkeeping, touched only from the worker's thread: a
//! reference count per bucket (several topics share a bucket) and the set of buckets whose
//! wanted state changed since the binder last looked.
//!
//! Invariants: `refs[b]` is the number of watched topics in bucket `b`; a bucket is in `dirty`
//! when it went 0 -> 1 or 1 -> 0 since the last [`Interest::take_dirty`].

use std::collections::BTreeSet;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a, 32 bits, over `bytes` (http://www.isthe.com/chongo/tech/comp/fnv/).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| (h ^ b as u32).wrapping_mul(FNV_PRIME))
}

/// The bucket of `topic` among `buckets` (at least 1).
pub fn bucket_of(topic: &str, buckets: u32) -> u32 {
    fnv1a32(topic.as_bytes()) % buckets.max(1)
}

/// The routing key of bucket `b` on the buckets exchange: its decimal number.
pub fn routing_key(b: u32) -> String {
    b.to_string()
}

/// A worker's wanted buckets.
#[derive(Debug)]
pub struct Interest {
    /// Watched topics per bucket.
    refs: Vec<u32>,
    /// Buckets whose wanted state flipped since the binder last looked.
    dirty: BTreeSet<u32>,
}

impl Interest {
    pub fn new(buckets: u32) -> Self {
        Self { refs: vec![0; buckets.max(1) as usize], dirty: BTreeSet::new() }
    }

    pub fn buckets(&self) -> u32 {
        self.refs.len() as u32
    }

    /// A topic gained its first local subscriber. Returns true when its bucket became wanted.
    pub fn watch(&mut self, topic: &str) -> bool {
        let b = bucket_of(topic, self.buckets());
        let r = &mut self.refs[b as usize];
        *r = r.saturating_add(1);
        let flipped = *r == 1;
        if flipped {
            self.dirty.insert(b);
        }
        flipped
    }

    /// A topic lost its last local subscriber. Returns true when its bucket is no longer
    /// wanted. An unwatch without a watch is ignored (it would otherwise unbind a bucket that
    /// another topic still needs).
    pub fn unwatch(&mut self, topic: &str) -> bool {
        let b = bucket_of(topic, self.buckets());
        let r = &mut self.refs[b as usize];
        if *r == 0 {
            tracing::debug!(topic, bucket = b, "unwatch of a bucket with no watched topic; ignored");
            return false;
        }
        *r -= 1;
        let flipped = *r == 0;
        if flipped {
            self.dirty.insert(b);
        }
        flipped
    }

    pub fn wanted(&self, b: u32) -> bool {
        self.refs.get(b as usize).is_some_and(|&r| r > 0)
    }

    /// Every wanted bucket, ascending (what a fresh connection binds).
    pub fn wanted_all(&self) -> Vec<u32> {
        (0..self.buckets()).filter(|&b| self.wanted(b)).collect()
    }

    /// The buckets to look at again, emptied.
    pub fn take_dirty(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_vectors() {
        // The reference vectors of the FNV authors, plus topics quoted in docs/rabbitmq.md.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a32(b"post:42"), 0xa7d7_2261);
        assert_eq!(fnv1a32(b"user:7"), 0x731a_543d);
    }

    #[test]
    fn buckets_and_keys() {
        assert_eq!(bucket_of("post:42", 1024), 609);
        assert_eq!(bucket_of("user:7", 1024), 61);
        assert_eq!(bucket_of("post:42", 1000), 113);
        assert_eq!(bucket_of("anything", 1), 0);
        assert_eq!(routing_key(609), "609");
        let spread: BTreeSet<u32> = (0..10_000).map(|i| bucket_of(&format!("post:{i}"), 64)).collect();
        assert_eq!(spread.len(), 64, "10k topics cover every one of 64 buckets");
    }

    #[test]
    fn interest_counts_topics_per_bucket() {
        // Two topics in one bucket, one in another.
        let n = 64;
        let a = "post:1";
        let same = (2..10_000).map(|i| format!("post:{i}")).find(|t| bucket_of(t, n) == bucket_of(a, n)).expect("same");
        let other =
            (2..10_000).map(|i| format!("post:{i}")).find(|t| bucket_of(t, n) != bucket_of(a, n)).expect("other");
        let (ba, bo) = (bucket_of(a, n), bucket_of(&other, n));
        let mut i = Interest::new(n);
        assert!(i.watch(a));
        assert!(!i.watch(&same), "bucket already wanted");
        assert!(i.watch(&other));
        assert_eq!(i.wanted_all(), {
            let mut v = vec![ba, bo];
            v.sort();
            v
        });
        assert_eq!(i.take_dirty().len(), 2);
        assert!(!i.unwatch(a), "still wanted by the other topic");
        assert!(i.take_dirty().is_empty());
        assert!(i.unwatch(&same));
        assert!(!i.wanted(ba));
        assert!(!i.unwatch(&same), "extra unwatch ignored");
        assert!(i.wanted(bo));
        assert_eq!(i.take_dirty().into_iter().collect::<Vec<_>>(), [ba]);
        // 0 -> 1 -> 0 leaves the bucket dirty once; the binder compares wanted with bound.
        i.watch(a);
        i.unwatch(a);
        assert_eq!(i.take_dirty().into_iter().collect::<Vec<_>>(), [ba]);
        assert!(!i.wanted(ba));
    }
}
