//! Which local connections receive which topics.
//!
//! One ledger per worker, touched only from that worker's thread: no locks (the worker keeps
//! it in a `RefCell`). [`Ledger::route`] is the hot path: one hash lookup by topic, then a
//! contiguous slice of connection ids to push the shared frame to.
//!
//! Invariants: a connection appears once per topic; a topic with no connections has no entry
//! (so its last forwarded seq is forgotten with it); `topics[t].subs[conns[c][i].pos] == c`
//! for every subscription, which makes removing one O(subscriptions of the connection moved)
//! instead of O(subscribers of the topic).

use std::collections::HashMap;
use std::rc::Rc;

/// A connection's id in its worker (a slot number, reused only after the ledger forgot it).
pub type ConnId = u32;

/// Index of a topic entry; reused after the topic goes away. Outside the ledger a topic is
/// named by its `Rc<str>`, whose allocation cannot be reused while anyone holds it.
type Slot = u32;

struct TopicEntry {
    name: Rc<str>,
    subs: Vec<ConnId>,
    /// Highest seq forwarded for this topic, once one was.
    last_seq: Option<u64>,
}

/// One subscription, as seen from its connection.
#[derive(Debug, Clone, Copy)]
struct Sub {
    topic: Slot,
    /// Where the connection sits in the topic's `subs`.
    pos: u32,
    /// When the token that allowed it stops being valid, seconds since the epoch.
    valid_until: u64,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerError {
    /// The connection is at its subscription limit.
    TooMany { limit: usize },
}

/// What [`Ledger::subscribe`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The topic had no subscriber before (the bus consumer should watch it).
    pub first: bool,
    /// The connection was already subscribed; only its validity was refreshed.
    pub renewed: bool,
    /// Highest seq this worker forwarded for the topic, when known.
    pub last_seq: Option<u64>,
}

/// Where one envelope goes.
pub struct Route<'a> {
    /// The topic's shared name (tag for queued frames).
    pub topic: &'a Rc<str>,
    /// Every local subscriber.
    pub conns: &'a [ConnId],
    /// The seq was not above the last one forwarded (a duplicate or reordering upstream).
    pub anomaly: bool,
}

/// Topic -> connections and connection -> topics, with the last forwarded seq per topic.
#[derive(Default)]
pub struct Ledger {
    /// Topic name -> slot in `topics`.
    by_name: HashMap<Rc<str>, Slot>,
    /// Topic entries by slot; `None` slots are listed in `free`.
    topics: Vec<Option<TopicEntry>>,
    free: Vec<Slot>,
    /// Each connection's subscriptions (a connection with none has no entry).
    conns: HashMap<ConnId, Vec<Sub>>,
    /// Total subscriptions, for the gauge.
    subscriptions: usize,
    /// Envelopes whose seq was not above the topic's last (see [`Route::anomaly`]).
    pub seq_anomalies: u64,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.by_name.len()
    }

    /// Subscriptions over every connection.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    fn entry(&self, slot: Slot) -> &TopicEntry {
        // Invariant: every slot reachable from `by_name` or `conns` is occupied.
        self.topics[slot as usize].as_ref().expect("ledger slot is occupied")
    }

    fn entry_mut(&mut self, slot: Slot) -> &mut TopicEntry {
        self.topics[slot as usize].as_mut().expect("ledger slot is occupied")
    }

    /// Subscribes `conn` to `topic` until `valid_until` (seconds). Subscribing again renews.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        topic: &str,
        valid_until: u64,
        limit: usize,
    ) -> Result<Subscribed, LedgerError> {
        let existing = self.by_name.get(topic).copied();
        let subs = self.conns.get(&conn).map_or(&[][..], Vec::as_slice);
        if let Some(slot) = existing
            && let Some(i) = subs.iter().position(|s| s.topic == slot)
        {
            let last_seq = self.entry(slot).last_seq;
            if let Some(list) = self.conns.get_mut(&conn) {
                list[i].valid_until = valid_until;
            }
            return Ok(Subscribed { first: false, renewed: true, last_seq });
        }
        if subs.len() >= limit {
            return Err(LedgerError::TooMany { limit });
        }
        let (slot, first) = match existing {
            Some(slot) => (slot, false),
            None => {
                let name: Rc<str> = Rc::from(topic);
                let entry = TopicEntry { name: name.clone(), subs: Vec::new(), last_seq: None };
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.topics[s as usize] = Some(entry);
                        s
                    }
                    None => {
                        self.topics.push(Some(entry));
                        (self.topics.len() - 1) as Slot
                    }
                };
                self.by_name.insert(name, slot);
                (slot, true)
            }
        };
        let entry = self.entry_mut(slot);
        let pos = entry.subs.len() as u32;
        entry.subs.push(conn);
        let last_seq = entry.last_seq;
        self.conns.entry(conn).or_default().push(Sub { topic: slot, pos, valid_until });
        self.subscriptions += 1;
        Ok(Subscribed { first, renewed: false, last_seq })
    }

    /// Removes the subscription at `conns[conn][i]`; returns the topic name when it was the
    /// topic's last subscriber (the topic is gone).
    fn remove_at(&mut self, conn: ConnId, i: usize) -> Option<Rc<str>> {
        let list = self.conns.get_mut(&conn)?;
        let sub = list.swap_remove(i);
        if list.is_empty() {
            self.conns.remove(&conn);
        }
        self.subscriptions -= 1;
        let entry = self.entry_mut(sub.topic);
        let removed = entry.subs.swap_remove(sub.pos as usize);
        debug_assert_eq!(removed, conn);
        if let Some(&moved) = entry.subs.get(sub.pos as usize) {
            // The last subscriber moved into the hole: fix its back-pointer.
            if let Some(m) = self.conns.get_mut(&moved).and_then(|l| l.iter_mut().find(|s| s.topic == sub.topic)) {
                m.pos = sub.pos;
            }
        }
        let entry = self.entry(sub.topic);
        if entry.subs.is_empty() {
            let name = entry.name.clone();
            self.by_name.remove(&*name);
            self.topics[sub.topic as usize] = None;
            self.free.push(sub.topic);
            return Some(name);
        }
        None
    }

    /// Unsubscribes `conn` from `topic`. `None`: it was not subscribed. `Some(true)`: the
    /// topic lost its last subscriber.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> Option<bool> {
        let slot = *self.by_name.get(topic)?;
        let i = self.conns.get(&conn)?.iter().position(|s| s.topic == slot)?;
        Some(self.remove_at(conn, i).is_some())
    }

    /// Forgets a connection; returns the topics that lost their last subscriber.
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<Rc<str>> {
        let mut gone = Vec::new();
        while self.conns.get(&conn).is_some_and(|l| !l.is_empty()) {
            if let Some(t) = self.remove_at(conn, 0) {
                gone.push(t);
            }
        }
        gone
    }

    /// The topic's shared name, while it has subscribers.
    pub fn name(&self, topic: &str) -> Option<Rc<str>> {
        self.by_name.get(topic).map(|&slot| self.entry(slot).name.clone())
    }

    /// Whether `conn` is subscribed to `topic`.
    pub fn is_subscribed(&self, conn: ConnId, topic: &str) -> bool {
        self.by_name.get(topic).is_some_and(|&slot| self.subs(conn).iter().any(|s| s.topic == slot))
    }

    fn subs(&self, conn: ConnId) -> &[Sub] {
        self.conns.get(&conn).map_or(&[][..], Vec::as_slice)
    }

    /// How many topics `conn` is subscribed to.
    pub fn count_of(&self, conn: ConnId) -> usize {
        self.subs(conn).len()
    }

    /// The topics `conn` is subscribed to.
    pub fn topics_of(&self, conn: ConnId) -> impl Iterator<Item = &Rc<str>> + '_ {
        self.subs(conn).iter().map(|s| &self.entry(s.topic).name)
    }

    /// Until when `conn`'s subscription to `topic` is valid.
    pub fn valid_until(&self, conn: ConnId, topic: &str) -> Option<u64> {
        let slot = *self.by_name.get(topic)?;
        self.subs(conn).iter().find(|s| s.topic == slot).map(|s| s.valid_until)
    }

    /// Every connection with at least one subscription.
    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// The subscribers of `topic` for an envelope with `seq`, recording `seq` as forwarded.
    /// `None` when nobody here is subscribed.
    pub fn route(&mut self, topic: &str, seq: u64) -> Option<Route<'_>> {
        let slot = *self.by_name.get(topic)?;
        let entry = self.topics[slot as usize].as_mut()?;
        let anomaly = entry.last_seq.is_some_and(|last| seq <= last);
        if anomaly {
            self.seq_anomalies += 1;
        } else {
            entry.last_seq = Some(seq);
        }
        Some(Route { topic: &entry.name, conns: &entry.subs, anomaly })
    }

    /// The subscribers of `topic`, without recording anything.
    pub fn subscribers(&self, topic: &str) -> &[ConnId] {
        self.by_name.get(topic).map_or(&[][..], |&slot| &self.entry(slot).subs)
    }

    /// Checks every invariant (tests and debug assertions).
    pub fn check_invariants(&self) {
        let mut total = 0;
        for (conn, list) in &self.conns {
            assert!(!list.is_empty(), "conn {conn} has an empty list");
            for s in list {
                assert_eq!(self.entry(s.topic).subs[s.pos as usize], *conn);
                total += 1;
            }
        }
        assert_eq!(total, self.subscriptions);
        for (name, &slot) in &self.by_name {
            let e = self.entry(slot);
            assert_eq!(&e.name, name);
            assert!(!e.subs.is_empty(), "topic {name} has no subscriber but an entry");
            let mut seen = e.subs.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), e.subs.len(), "duplicate subscriber in {name}");
        }
        assert_eq!(self.topics.iter().filter(|t| t.is_some()).count(), self.by_name.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_route_unsubscribe() {
        let mut l = Ledger::new();
        assert_eq!(l.subscribe(1, "a", 100, 4), Ok(Subscribed { first: true, renewed: false, last_seq: None }));
        assert!(!l.subscribe(2, "a", 100, 4).unwrap().first);
        l.subscribe(2, "b", 100, 4).unwrap();
        let r = l.route("a", 5).unwrap();
        assert_eq!((r.conns, r.anomaly, &**r.topic), (&[1, 2][..], false, "a"));
        assert!(l.route("c", 1).is_none());
        // The ok answer carries the last forwarded seq; renewing updates validity only.
        assert_eq!(l.subscribe(1, "a", 200, 4), Ok(Subscribed { first: false, renewed: true, last_seq: Some(5) }));
        assert_eq!(l.valid_until(1, "a"), Some(200));
        assert_eq!(l.unsubscribe(1, "a"), Some(false));
        assert_eq!(l.unsubscribe(1, "a"), None);
        assert_eq!(l.subscribers("a"), &[2]);
        assert_eq!(l.unsubscribe(2, "a"), Some(true));
        assert_eq!(l.topic_count(), 1);
        // A topic that went away forgets its seq.
        assert_eq!(l.subscribe(1, "a", 1, 4).unwrap(), Subscribed { first: true, renewed: false, last_seq: None });
        l.check_invariants();
    }

    #[test]
    fn limit_per_connection() {
        let mut l = Ledger::new();
        l.subscribe(1, "a", 1, 2).unwrap();
        l.subscribe(1, "b", 1, 2).unwrap();
        assert_eq!(l.subscribe(1, "c", 1, 2), Err(LedgerError::TooMany { limit: 2 }));
        // Renewing an existing subscription at the limit is fine.
        assert!(l.subscribe(1, "b", 9, 2).unwrap().renewed);
        assert_eq!(l.count_of(1), 2);
        assert!(l.subscribe(2, "c", 1, 2).unwrap().first);
    }

    #[test]
    fn seq_anomalies_are_counted_and_still_routed() {
        let mut l = Ledger::new();
        l.subscribe(1, "a", 1, 4).unwrap();
        assert!(!l.route("a", 3).unwrap().anomaly);
        assert!(l.route("a", 3).unwrap().anomaly);
        assert!(l.route("a", 2).unwrap().anomaly);
        assert!(!l.route("a", 4).unwrap().anomaly);
        assert_eq!(l.seq_anomalies, 2);
        assert_eq!(l.subscribe(2, "a", 1, 4).unwrap().last_seq, Some(4));
    }

    #[test]
    fn remove_conn_reports_emptied_topics_and_keeps_back_pointers() {
        let mut l = Ledger::new();
        for c in 0..50u32 {
            for t in 0..5 {
                l.subscribe(c, &format!("t{}", (c as usize + t) % 7), 1, 8).unwrap();
            }
        }
        l.check_invariants();
        for c in (0..50u32).step_by(3) {
            l.remove_conn(c);
            l.check_invariants();
        }
        let mut gone = Vec::new();
        for c in 0..50u32 {
            gone.extend(l.remove_conn(c).iter().map(|t| t.to_string()));
            l.check_invariants();
        }
        assert_eq!(l.topic_count(), 0);
        assert_eq!(l.subscription_count(), 0);
        assert!(gone.len() <= 7);
        assert!(l.remove_conn(3).is_empty());
    }

    #[test]
    fn random_operations_keep_invariants() {
        // A small deterministic PRNG: the point is many interleavings, not randomness.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut l = Ledger::new();
        let mut model: std::collections::HashSet<(u32, String)> = Default::default();
        for _ in 0..5000 {
            let c = (next() % 20) as u32;
            let t = format!("t{}", next() % 10);
            match next() % 4 {
                0 | 1 => {
                    if l.subscribe(c, &t, 1, 6).is_ok() {
                        model.insert((c, t));
                    }
                }
                2 => {
                    assert_eq!(l.unsubscribe(c, &t).is_some(), model.remove(&(c, t)));
                }
                _ => {
                    if next() % 8 == 0 {
                        l.remove_conn(c);
                        model.retain(|(mc, _)| *mc != c);
                    }
                }
            }
            assert_eq!(l.subscription_count(), model.len());
        }
        l.check_invariants();
        for (c, t) in &model {
            assert!(l.is_subscribed(*c, t));
        }
    }
}
