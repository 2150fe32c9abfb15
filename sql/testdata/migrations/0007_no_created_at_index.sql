-- walwatch schema, version 7: puts stop paying for age compaction.
--
-- The index on created_at served one rare statement, compact_older_than, and
-- every put paid for it: 64 of its 464 WAL bytes, and a tenth of its server
-- time (pgbench on a scratch cluster, one client, asynchronous commit so the
-- flush does not hide it, medians of three: 0.321 against 0.287 ms a put).
-- Rows are stamped with their transaction's start, which follows revision
-- order to within the length of a write transaction, so a binary search over
-- the primary key finds where an age begins in about forty probes.
drop index walwatch.kv_created_at;

-- The first revision, in revision order, of a row written at or after p_at;
-- null when every row is older.
create or replace function walwatch.first_revision_since(p_at timestamptz) returns bigint
language plpgsql stable as $$
declare
    lo bigint;
    hi bigint;
    mid bigint;
    stamp timestamptz;
begin
    select min(k.revision), max(k.revision) into lo, hi from walwatch.kv k;
    if hi is null or (select k.created_at from walwatch.kv k where k.revision = hi order by k.sub limit 1) < p_at then
        return null;
    end if;
    -- Smallest mid whose first row at or above it is young enough; the
    -- newest row is, so the search always ends on a row.
    while lo < hi loop
        mid := lo + (hi - lo) / 2;
        select k.created_at into stamp from walwatch.kv k where k.revision >= mid order by k.revision, k.sub limit 1;
        if stamp >= p_at then
            hi := mid;
        else
            lo := mid + 1;
        end if;
    end loop;
    return (select k.revision from walwatch.kv k where k.revision >= lo order by k.revision limit 1);
end
$$;

-- Compacts at the oldest revision written within p_age (or at the current
-- revision when nothing was), so history older than p_age goes.
create or replace function walwatch.compact_older_than(p_age interval) returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(
        coalesce(walwatch.first_revision_since(now() - p_age), walwatch.current_revision()),
        false)
$$;
