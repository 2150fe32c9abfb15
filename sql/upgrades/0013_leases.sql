-- Version 13: leases. The table and the index schema.sql makes; the
-- functions are in functions.sql.
-- Leases (walwatch.grant and its neighbours in functions.sql): a key
-- carries its lease in kv.lease. Not in the publication: a keep-alive moves
-- deadline and is no event. No index on deadline, so that a keep-alive is a
-- HOT update; the expiry scan reads the whole table, which is small.
create table walwatch.lease (
    id         bigint      primary key check (id > 0),
    ttl        bigint      not null check (ttl > 0), -- seconds, as granted
    deadline   timestamptz not null,
    granted_at timestamptz not null default now()
);

-- The keys of a lease, for revoke and expiry; puts without a lease (most)
-- are not in it.
create index kv_lease on walwatch.kv (lease) where lease <> 0;
