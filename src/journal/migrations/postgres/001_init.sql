-- The journal's first schema (PostgreSQL). Applied once, in a transaction, under an advisory
-- lock, by store/postgres.rs.
--
-- topics: one row per topic, the seq counter. `last_seq` is the highest seq ever assigned
-- (appends bump it with INSERT .. ON CONFLICT DO UPDATE in their own transaction: the row
-- lock serializes appenders of one topic across connections, processes and hosts);
-- `pruned_through` is the highest seq retention removed (every seq at or below it is gone).
CREATE TABLE topics (
    topic          text   NOT NULL PRIMARY KEY,
    last_seq       bigint NOT NULL,
    pruned_through bigint NOT NULL DEFAULT 0
);

-- envelopes: the stored frame (exactly the bytes clients receive) and the columns queries need.
CREATE TABLE envelopes (
    topic text   NOT NULL,
    seq   bigint NOT NULL,
    id    text   NOT NULL,
    ts    bigint NOT NULL,
    frame bytea  NOT NULL,
    PRIMARY KEY (topic, seq)
);

-- outbox: envelopes stored but not yet confirmed by the bus. `id` is drawn after the topic's
-- counter row is locked, so for one topic it grows with seq in commit order. A row is deleted
-- once the bus took the envelope.
CREATE TABLE outbox (
    id    bigserial PRIMARY KEY,
    topic text      NOT NULL,
    seq   bigint    NOT NULL
);
