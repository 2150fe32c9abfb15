-- walwatch schema, version 2: where a watch hub may start.
--
-- settled_revision is a hint a watch hub keeps: every revision from the
-- compacted one up to it has its rows in the table (fillers included). A hub
-- starting afresh reads the table from there instead of from the beginning.
alter table walwatch.meta add column settled_revision bigint not null default 0;

-- Raises the hint; never lowers it.
create or replace function walwatch.settle(p_rev bigint) returns void
language sql volatile as $$
    update walwatch.meta set settled_revision = p_rev where settled_revision < p_rev
$$;

-- Settles revisions no transaction committed, as the watch hub does for a hole
-- that outlives its grace period: inserts a filler at (revision, 0) for each.
-- PostgreSQL makes each insert wait for a transaction still holding that
-- revision; if it commits, the filler does nothing; if it rolled back, or the
-- value was never used, the filler takes it. Returns how many it took.
create or replace function walwatch.fill(p_revs bigint[]) returns bigint
language sql volatile as $$
    with f as (
        insert into walwatch.kv (revision, sub, key, value, tombstone)
        select r, 0, ''::bytea, null, true from unnest(p_revs) as r order by r
        -- No conflict target: two hubs filling the same revision meet on
        -- the (key, revision) index too, fillers all having the empty key.
        on conflict do nothing
        returning 1
    )
    select count(*) from f
$$;
