-- walwatch schema, version 1: the append-only revision table, the compaction
-- record, the publication the watch hub reads, and the SQL API.
--
-- Every put and delete is a new row. A write transaction takes one revision
-- from walwatch.revision (CACHE 1, so values are handed out in order); its rows
-- are ordered inside it by sub, as etcd's {main, sub}.

create sequence walwatch.revision as bigint start with 2 minvalue 1 cache 1;

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

-- Point and range reads at any revision: the newest row of a key at or below R.
-- Unique because a revision writes a key at most once.
create unique index kv_key_revision on walwatch.kv (key, revision desc);
-- Age-based compaction.
create index kv_created_at on walwatch.kv (created_at);

-- The compacted revision: reads below it fail, reads at it work.
create table walwatch.meta (
    id               boolean primary key default true check (id),
    compact_revision bigint  not null default 0
);
insert into walwatch.meta default values;

-- INSERTs only: compaction deletes rows and must send watchers nothing.
create publication walwatch for table walwatch.kv with (publish = 'insert');

-- Errors callers can tell apart (the Go store maps them to typed errors):
--   WWC01 revision compacted (detail: the compacted revision)
--   WWF01 revision in the future (detail: the current revision)
--   WWK01 empty key

create or replace function walwatch.compact_revision() returns bigint
language sql stable as $$
    select compact_revision from walwatch.meta
$$;

-- The newest committed revision, never below the compacted one (compaction may
-- remove the newest row when it is a tombstone). An empty store is at 1.
create or replace function walwatch.current_revision() returns bigint
language sql stable as $$
    select greatest(coalesce((select max(revision) from walwatch.kv), 1),
                    (select compact_revision from walwatch.meta))
$$;

-- The end of the range holding every key that starts with p, as etcd computes
-- it: the prefix with its last byte below 0xff incremented, or '\x00' (no end)
-- when every byte is 0xff.
create or replace function walwatch.prefix_end(p bytea) returns bytea
language plpgsql immutable strict as $$
declare
    i integer := length(p);
begin
    while i > 0 loop
        if get_byte(p, i - 1) < 255 then
            return set_byte(substr(p, 1, i), i - 1, get_byte(p, i - 1) + 1);
        end if;
        i := i - 1;
    end loop;
    return '\x00'::bytea;
end
$$;

-- The revision a read uses: 0 means the current one. Fails below the compacted
-- revision and above the current one.
create or replace function walwatch.read_revision(p_rev bigint) returns bigint
language plpgsql stable as $$
declare
    cur bigint := walwatch.current_revision();
    compacted bigint := walwatch.compact_revision();
begin
    if p_rev is null or p_rev = 0 then
        return cur;
    end if;
    if p_rev < 0 then
        raise exception 'invalid revision %: must be 0 (latest) or positive', p_rev
            using errcode = '22023';
    end if;
    if p_rev < compacted then
        raise exception 'required revision % has been compacted (compacted revision %)', p_rev, compacted
            using errcode = 'WWC01', detail = compacted::text;
    end if;
    if p_rev > cur then
        raise exception 'required revision % is a future revision (current revision %)', p_rev, cur
            using errcode = 'WWF01', detail = cur::text;
    end if;
    return p_rev;
end
$$;

-- The advisory lock that serialises writers of one key, so version and
-- create_revision stay exact; writers of different keys never wait for each
-- other (a hash collision only makes two of them wait). Held until commit.
create or replace function walwatch.key_lock(p_key bytea) returns bigint
language sql immutable strict as $$
    select hashtextextended(encode(p_key, 'escape'), 0)
$$;

-- Locks several keys in one order, so two writers of the same keys cannot deadlock.
create or replace function walwatch.lock_keys(p_keys bytea[]) returns void
language sql volatile as $$
    select pg_advisory_xact_lock(h)
    from (select distinct walwatch.key_lock(k) as h from unnest(p_keys) as k) as hs
    order by h
$$;

-- Appends one row for p_key at revision p_rev, or at a new revision from the
-- sequence when p_rev is null, and returns the revision written. The caller
-- holds the key's lock, so the version read here stays exact.
--
-- A new revision can meet a filler: the watch hub settles a revision that
-- outlives a grace period by inserting (revision, 0) itself. Only the first row
-- of a revision can meet one, and losing to it just means taking the next
-- revision, so no write fails for it.
create or replace function walwatch.append(p_rev bigint, p_sub integer, p_key bytea, p_value bytea,
                                           p_tombstone boolean, p_lease bigint default 0)
returns bigint
language plpgsql volatile as $$
declare
    prev walwatch.kv%rowtype;
    created boolean;
    rev bigint := p_rev;
    n integer;
begin
    if p_key is null or length(p_key) = 0 then
        raise exception 'key is empty' using errcode = 'WWK01';
    end if;
    select * into prev from walwatch.kv where key = p_key order by revision desc limit 1;
    created := prev.revision is null or prev.tombstone;
    loop
        if p_rev is null then
            rev := nextval('walwatch.revision');
        end if;
        insert into walwatch.kv (revision, sub, key, value, tombstone, create_revision, version, prev_revision, lease)
        values (rev, p_sub, p_key, case when p_tombstone then null else coalesce(p_value, ''::bytea) end, p_tombstone,
                case when p_tombstone then 0 when created then rev else prev.create_revision end,
                case when p_tombstone then 0 when created then 1 else prev.version + 1 end,
                coalesce(prev.revision, 0), coalesce(p_lease, 0))
        on conflict (revision, sub) do nothing;
        get diagnostics n = row_count;
        if n = 1 then
            return rev;
        end if;
        if p_rev is not null then
            raise exception 'revision % sub % is already taken', p_rev, p_sub using errcode = '23505';
        end if;
    end loop;
end
$$;

-- The exclusive upper bound of a range given as etcd gives it: no end means the
-- single key p_key; '\x00' means every key from p_key on (null here).
create or replace function walwatch.range_upper(p_key bytea, p_end bytea) returns bytea
language sql immutable as $$
    select case
        when p_end is null or length(p_end) = 0 then p_key || '\x00'::bytea
        when p_end = '\x00'::bytea then null
        else p_end
    end
$$;

-- The newest row of each key in [p_lo, p_hi) at or below p_rev, live keys only,
-- in key order, at most p_limit (null: all). p_hi null means no upper bound; the
-- two cases are two queries so each keeps its index bounds in a cached plan.
create or replace function walwatch.latest_rows(p_lo bytea, p_hi bytea, p_rev bigint, p_limit bigint)
returns setof walwatch.kv
language plpgsql stable as $$
begin
    if p_hi is null then
        return query
            select * from (select distinct on (k.key) k.* from walwatch.kv k
                           where k.key >= p_lo and k.revision <= p_rev
                           order by k.key, k.revision desc) t
            where not t.tombstone order by t.key limit p_limit;
    else
        return query
            select * from (select distinct on (k.key) k.* from walwatch.kv k
                           where k.key >= p_lo and k.key < p_hi and k.revision <= p_rev
                           order by k.key, k.revision desc) t
            where not t.tombstone order by t.key limit p_limit;
    end if;
end
$$;

-- Reads a key or range (etcd's key and range_end) at revision p_rev (0: the
-- current one), at most p_limit keys (0: all), in one snapshot. Returns the
-- revision read at and the keys as parallel arrays.
create or replace function walwatch.range(p_key bytea, p_end bytea, p_rev bigint default 0, p_limit bigint default 0,
    out revision bigint, out more boolean, out keys bytea[], out vals bytea[],
    out create_revisions bigint[], out mod_revisions bigint[], out versions bigint[])
language plpgsql stable as $$
declare
    lim bigint := nullif(p_limit, 0);
begin
    if p_key is null or length(p_key) = 0 then
        raise exception 'key is empty' using errcode = 'WWK01';
    end if;
    if p_limit < 0 then
        raise exception 'invalid limit %: must be 0 (no limit) or positive', p_limit using errcode = '22023';
    end if;
    revision := walwatch.read_revision(p_rev);
    select coalesce(array_agg(r.key order by r.key) filter (where r.n <= coalesce(lim, r.n)), '{}'),
           coalesce(array_agg(r.value order by r.key) filter (where r.n <= coalesce(lim, r.n)), '{}'),
           coalesce(array_agg(r.create_revision order by r.key) filter (where r.n <= coalesce(lim, r.n)), '{}'),
           coalesce(array_agg(r.revision order by r.key) filter (where r.n <= coalesce(lim, r.n)), '{}'),
           coalesce(array_agg(r.version order by r.key) filter (where r.n <= coalesce(lim, r.n)), '{}'),
           coalesce(bool_or(r.n > lim), false)
      into keys, vals, create_revisions, mod_revisions, versions, more
      from (select l.*, row_number() over (order by l.key) as n
            from walwatch.latest_rows(p_key, walwatch.range_upper(p_key, p_end), revision, lim + 1) l) r;
end
$$;

-- Puts one key: one revision, one round trip.
create or replace function walwatch.put(p_key bytea, p_value bytea, p_lease bigint default 0) returns bigint
language plpgsql volatile as $$
begin
    if p_key is null or length(p_key) = 0 then
        raise exception 'key is empty' using errcode = 'WWK01';
    end if;
    perform pg_advisory_xact_lock(walwatch.key_lock(p_key));
    return walwatch.append(null, 0, p_key, p_value, false, p_lease);
end
$$;

-- Deletes a key or range (etcd's key and range_end): one revision for all the
-- keys it deletes, none when it deletes nothing. Inside a Txn that already
-- writes at p_rev, its rows follow at sub p_sub onwards. Returns the revision
-- (the current one when nothing was deleted) and the number of keys deleted.
create or replace function walwatch.delete_range(p_key bytea, p_end bytea, p_rev bigint default null, p_sub integer default 0,
    out revision bigint, out deleted bigint)
language plpgsql volatile as $$
declare
    hi bytea := walwatch.range_upper(p_key, p_end);
    candidates bytea[];
    k bytea;
begin
    if p_key is null or length(p_key) = 0 then
        raise exception 'key is empty' using errcode = 'WWK01';
    end if;
    candidates := array(select l.key from walwatch.latest_rows(p_key, hi, walwatch.current_revision(), null) l);
    revision := p_rev;
    deleted := 0;
    if cardinality(candidates) > 0 then
        perform walwatch.lock_keys(candidates);
        -- A concurrent writer may have deleted some before we held their locks.
        foreach k in array candidates loop
            if (select not kv.tombstone from walwatch.kv where kv.key = k order by kv.revision desc limit 1) then
                revision := walwatch.append(revision, p_sub + deleted::integer, k, null, true);
                deleted := deleted + 1;
            end if;
        end loop;
    end if;
    if revision is null then
        revision := walwatch.current_revision();
    end if;
end
$$;

-- Every change (tombstones included, fillers never) to keys in [p_lo, p_hi)
-- with a revision in (p_after, p_upto], in revision and sub order, at most
-- p_limit rows (null: all). p_hi null means no upper bound. Fails when changes
-- after p_after have been compacted away.
create or replace function walwatch.changes_between(p_lo bytea, p_hi bytea, p_after bigint, p_upto bigint, p_limit bigint)
returns setof walwatch.kv
language plpgsql stable as $$
declare
    compacted bigint := walwatch.compact_revision();
begin
    if p_after + 1 < compacted then
        raise exception 'required revision % has been compacted (compacted revision %)', p_after + 1, compacted
            using errcode = 'WWC01', detail = compacted::text;
    end if;
    if p_hi is null then
        return query select * from walwatch.kv k
            where k.key >= p_lo and k.key <> ''::bytea and k.revision > p_after and k.revision <= p_upto
            order by k.revision, k.sub limit p_limit;
    else
        return query select * from walwatch.kv k
            where k.key >= p_lo and k.key < p_hi and k.key <> ''::bytea and k.revision > p_after and k.revision <= p_upto
            order by k.revision, k.sub limit p_limit;
    end if;
end
$$;

-- Compacts at p_rev: deletes every row no read at or above p_rev can see (rows
-- superseded at or below p_rev, tombstones and fillers below it) and records
-- p_rev. The newest row of a live key always survives; rows at p_rev and above
-- are kept, so a watch from p_rev still sees them. With p_strict, compacting at
-- or below the compacted revision fails as etcd's does; without, it is a no-op.
create or replace function walwatch.compact_to(p_rev bigint, p_strict boolean,
    out compact_revision bigint, out removed bigint)
language plpgsql volatile as $$
#variable_conflict use_column
declare
    old bigint;
    cur bigint;
begin
    select m.compact_revision into old from walwatch.meta m for update; -- one compaction at a time
    cur := walwatch.current_revision();
    if p_rev > cur then
        raise exception 'required revision % is a future revision (current revision %)', p_rev, cur
            using errcode = 'WWF01', detail = cur::text;
    end if;
    if p_rev <= old then
        if p_strict then
            raise exception 'required revision % has been compacted (compacted revision %)', p_rev, old
                using errcode = 'WWC01', detail = old::text;
        end if;
        compact_revision := old;
        removed := 0;
        return;
    end if;
    delete from walwatch.kv k
     where k.revision < p_rev
       and (k.tombstone
            or exists (select 1 from walwatch.kv n
                        where n.key = k.key and n.revision > k.revision and n.revision <= p_rev));
    get diagnostics removed = row_count;
    update walwatch.meta set compact_revision = p_rev;
    compact_revision := p_rev;
end
$$;

-- The seed's SQL API, for psql: keys and values as text (UTF-8), revisions as
-- bigint. select walwatch.set('/routes/foo', '{"uri":"/get"}');

create or replace function walwatch.set(p_key text, p_value text) returns bigint
language sql volatile as $$
    select walwatch.put(convert_to(p_key, 'UTF8'), convert_to(p_value, 'UTF8'))
$$;

-- Returns the revision of the delete, or null when the key did not exist.
create or replace function walwatch.del(p_key text) returns bigint
language sql volatile as $$
    select case when d.deleted > 0 then d.revision end
    from walwatch.delete_range(convert_to(p_key, 'UTF8'), null) d
$$;

create or replace function walwatch.get(p_key text, p_rev bigint default 0)
returns table (key text, value text, revision bigint, create_revision bigint, version bigint)
language sql stable as $$
    select convert_from(l.key, 'UTF8'), convert_from(l.value, 'UTF8'), l.revision, l.create_revision, l.version
    from walwatch.latest_rows(convert_to(p_key, 'UTF8'), convert_to(p_key, 'UTF8') || '\x00'::bytea,
                              walwatch.read_revision(p_rev), null) l
$$;

create or replace function walwatch.get_all(p_prefix text, p_rev bigint default 0)
returns table (key text, value text, revision bigint, create_revision bigint, version bigint)
language sql stable as $$
    select convert_from(l.key, 'UTF8'), convert_from(l.value, 'UTF8'), l.revision, l.create_revision, l.version
    from walwatch.latest_rows(convert_to(p_prefix, 'UTF8'),
                              nullif(walwatch.prefix_end(convert_to(p_prefix, 'UTF8')), '\x00'::bytea),
                              walwatch.read_revision(p_rev), null) l
$$;

create or replace function walwatch.changes(p_prefix text, p_after_rev bigint)
returns table (revision bigint, key text, value text, tombstone boolean,
               create_revision bigint, version bigint, prev_revision bigint)
language sql stable as $$
    select c.revision, convert_from(c.key, 'UTF8'), convert_from(c.value, 'UTF8'), c.tombstone,
           c.create_revision, c.version, c.prev_revision
    from walwatch.changes_between(convert_to(p_prefix, 'UTF8'),
                                  nullif(walwatch.prefix_end(convert_to(p_prefix, 'UTF8')), '\x00'::bytea),
                                  p_after_rev, walwatch.current_revision(), null) c
$$;

create or replace function walwatch.compact(p_rev bigint) returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(p_rev, true)
$$;

-- Compacts at the oldest revision written within p_age (or at the current
-- revision when nothing was), so history older than p_age goes.
create or replace function walwatch.compact_older_than(p_age interval) returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(
        coalesce((select k.revision from walwatch.kv k where k.created_at >= now() - p_age
                  order by k.created_at limit 1),
                 walwatch.current_revision()),
        false)
$$;

-- Keeps only the newest row of each live key.
create or replace function walwatch.compact_keep_latest() returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(walwatch.current_revision(), false)
$$;
