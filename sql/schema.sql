-- walwatch's tables, sequence, index and publication, as a fresh database
-- gets them at the current schema version (sql.Latest). Migrate runs this
-- once, on a database with no walwatch schema version, and then
-- functions.sql. A database at an older version gets the steps in upgrades/
-- instead; TestUpgradeEqualsFresh checks that both ways end in the same
-- catalog. walwatch.schema_migrations, which records the version, is made
-- by Migrate itself (sql.go).

-- One revision per write transaction, from one sequence. CACHE 1 hands
-- values out in order. An empty store is at revision 1 and the first write
-- gets 2, as in etcd.
create sequence walwatch.revision as bigint start with 2 minvalue 1 cache 1;

-- The revision table, append-only: a put inserts a row, a delete a tombstone
-- row, and nothing is updated in place. The rows of one revision (a Txn's
-- writes) are ordered by sub, so (revision, sub) is etcd's {main, sub}.
-- create_revision and version count as etcd's do (walwatch.new_row).
create table walwatch.kv (
    revision        bigint      not null,
    sub             integer     not null default 0,
    key             bytea       not null,
    value           bytea,
    tombstone       boolean     not null default false,
    create_revision bigint      not null default 0,
    version         bigint      not null default 0,
    prev_revision   bigint      not null default 0,
    lease           bigint      not null default 0,
    created_at      timestamptz not null default now(),
    primary key (revision, sub)
);

comment on table walwatch.kv is
    'One row per change. A row with an empty key is a filler: it settles a revision that no transaction committed and is never shown.';

-- Point and range reads at any revision: the newest row of a key at or below
-- R. Unique because a revision writes a key at most once. There is no index
-- on created_at: age compaction finds its revision through the primary key
-- (walwatch.first_revision_since), and such an index cost every put a tenth
-- of its time.
create unique index kv_key_revision on walwatch.kv (key, revision desc);

-- The tombstones alone, for counting a range (walwatch.range_count) from
-- the indexes without reading a row of the table: the key index gives each
-- key's newest revision, this one the keys whose newest row is a deletion.
-- Puts, most rows, are not in it.
create index kv_tombstones on walwatch.kv (key, revision desc) where tombstone;

-- One row. compact_revision: reads below it fail, reads at it work.
-- settled_revision: a hint a watch hub keeps, every revision from the
-- compacted one up to it has its rows in the table (fillers included), so a
-- hub starting afresh reads the table from there.
create table walwatch.meta (
    id               boolean primary key default true check (id),
    compact_revision bigint  not null default 0,
    settled_revision bigint  not null default 0
);
insert into walwatch.meta default values;

-- What watchers read through a logical replication slot: INSERTs only, so
-- that compaction, which deletes, sends them nothing.
create publication walwatch for table walwatch.kv with (publish = 'insert');

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
