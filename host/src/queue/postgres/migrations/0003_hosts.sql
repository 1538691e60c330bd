-- Migration 3: the host registry (`hosts.rs`). Each running host keeps a
-- row here, renewed every few seconds; a row past `expires_at` (the
-- database's clock, so hosts on other machines agree) is a gone host,
-- whose leases are reclaimed at once. `reloads` counts `host reload`
-- requests; each host reloads when it sees its count grow.
CREATE TABLE @schema@.hosts (
    id         text        PRIMARY KEY,
    info       jsonb       NOT NULL,
    expires_at timestamptz NOT NULL,
    reloads    bigint      NOT NULL DEFAULT 0
);
