-- The journal's first schema (SQLite). Applied once, in a transaction, by store/sqlite.rs.
--
-- topics: one row per topic, the seq counter. `last_seq` is the highest seq ever assigned
-- (appends bump it in their own transaction, which is what makes seqs gapless and unique);
-- `pruned_through` is the highest seq retention removed (every seq at or below it is gone).
CREATE TABLE topics (
    topic          TEXT    NOT NULL PRIMARY KEY,
    last_seq       INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- envelopes: the stored frame (exactly the bytes clients receive) and the columns queries
-- need. A rowid table: frames can be large, which WITHOUT ROWID tables handle badly.
CREATE TABLE envelopes (
    topic TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    id    TEXT    NOT NULL,
    ts    INTEGER NOT NULL,
    frame BLOB    NOT NULL,
    PRIMARY KEY (topic, seq)
);

-- outbox: envelopes stored but not yet confirmed by the bus, in append order (`id` grows
-- with every insert: appends are serialized by BEGIN IMMEDIATE). A row is deleted once the
-- bus took the envelope.
CREATE TABLE outbox (
    id    INTEGER PRIMARY KEY,
    topic TEXT    NOT NULL,
    seq   INTEGER NOT NULL
);
