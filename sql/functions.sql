-- Every walwatch function, each defined once, as the current schema version
-- (sql.Latest) has it.
--
-- Migrate runs this whole file on every call, after schema.sql (a fresh
-- database) or the steps in upgrades/ (an older one), in the same
-- transaction. "create or replace" keeps each function's grants; a new
-- function gets the default privileges.
--
-- To change a function, change it here and raise the version in sql.go, so
-- that CheckVersion sends a database with the old functions to `walwatch
-- migrate` (TestSQLPinnedToVersion reminds you); no step is needed. A step
-- in upgrades/ is needed only for what create or replace cannot do:
-- dropping a function, or changing its result type or parameter names (drop
-- it there; this file creates it again).
--
-- A SQL-language function's body is checked when it is created, so each one
-- comes after the functions it calls. The measurements behind the shapes
-- chosen here are in docs/benchmarks/sql-notes.md.


-- Errors --------------------------------------------------------------------

-- Errors callers tell apart by SQLSTATE (the Go store maps them to typed
-- errors in store/errors.go):
--   WWC01  revision compacted; detail: the compacted revision
--   WWF01  revision in the future; detail: the current revision
--   WWK01  empty key
-- Each has one function that raises it, so that its text is written once.

create or replace function walwatch.raise_compacted(p_rev bigint, p_compacted bigint) returns void
language plpgsql as $$
begin
    raise exception 'required revision % has been compacted (compacted revision %)', p_rev, p_compacted
        using errcode = 'WWC01', detail = p_compacted::text;
end
$$;

create or replace function walwatch.raise_future(p_rev bigint, p_current bigint) returns void
language plpgsql as $$
begin
    raise exception 'required revision % is a future revision (current revision %)', p_rev, p_current
        using errcode = 'WWF01', detail = p_current::text;
end
$$;

create or replace function walwatch.raise_empty_key() returns void
language plpgsql as $$
begin
    raise exception 'key is empty' using errcode = 'WWK01';
end
$$;

-- Whether p_key is a key: at least one byte. A filler row is the only row
-- with an empty key, and nobody may write or read one. A SQL expression
-- the planner inlines, so that checking costs what the expression costs;
-- a PL/pgSQL call would cost a put 2%.
create or replace function walwatch.is_key(p_key bytea) returns boolean
language sql immutable as $$
    select coalesce(length(p_key) > 0, false)
$$;

-- Refuses what no range read takes: an empty key, a negative limit (0: no
-- limit).
create or replace function walwatch.check_range(p_key bytea, p_limit bigint) returns void
language plpgsql as $$
begin
    if not walwatch.is_key(p_key) then
        perform walwatch.raise_empty_key();
    end if;
    if p_limit < 0 then
        raise exception 'invalid limit %: must be 0 (no limit) or positive', p_limit using errcode = '22023';
    end if;
end
$$;


-- Revisions -----------------------------------------------------------------

-- The current and the compacted revision, in one read. The current revision
-- is the newest one written, never below the compacted one (compaction may
-- remove the newest row when it is a tombstone); an empty store is at 1.
-- Set-returning so that the planner inlines it into the statements of
-- current_revision and read_revision, which cache their plans.
create or replace function walwatch.revisions(out current_revision bigint, out compact_revision bigint)
returns setof record
language sql stable as $$
    select greatest(coalesce((select max(k.revision) from walwatch.kv k), 1), m.compact_revision),
           m.compact_revision
    from walwatch.meta m
$$;

-- These two are PL/pgSQL, not SQL: a SQL function called on its own is
-- planned on every call, a PL/pgSQL one caches its plan.
create or replace function walwatch.compact_revision() returns bigint
language plpgsql stable as $$
begin
    return (select m.compact_revision from walwatch.meta m);
end
$$;

create or replace function walwatch.current_revision() returns bigint
language plpgsql stable as $$
begin
    return (select r.current_revision from walwatch.revisions() r);
end
$$;

-- The revision a read uses: 0 (or null) means the current one. Fails below
-- the compacted revision and above the current one; the compacted revision
-- itself still reads.
create or replace function walwatch.read_revision(p_rev bigint) returns bigint
language plpgsql stable as $$
declare
    cur bigint;
    compacted bigint;
begin
    select r.current_revision, r.compact_revision into cur, compacted from walwatch.revisions() r;
    if p_rev is null or p_rev = 0 then
        return cur;
    end if;
    if p_rev < 0 then
        raise exception 'invalid revision %: must be 0 (latest) or positive', p_rev
            using errcode = '22023';
    end if;
    if p_rev < compacted then
        perform walwatch.raise_compacted(p_rev, compacted);
    end if;
    if p_rev > cur then
        perform walwatch.raise_future(p_rev, cur);
    end if;
    return p_rev;
end
$$;


-- Key ranges ----------------------------------------------------------------

-- The end of the range holding every key that starts with p, as etcd
-- computes it: the prefix with its last byte below 0xff incremented, or
-- '\x00' (no end) when every byte is 0xff.
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

-- The exclusive upper bound of a range given as etcd gives it, key and
-- range_end: no end (null or empty) means the single key p_key, so the bound
-- is p_key || '\x00'; the end '\x00' means every key from p_key on, so no
-- bound (null); any other end is the bound. Every function here turns a
-- range into bounds with this one, and a range is a single key exactly when
-- its bound is range_upper(key, null).
create or replace function walwatch.range_upper(p_key bytea, p_end bytea) returns bytea
language sql immutable as $$
    select case
        when p_end is null or length(p_end) = 0 then p_key || '\x00'::bytea
        when p_end = '\x00'::bytea then null
        else p_end
    end
$$;


-- Locks ---------------------------------------------------------------------

-- The advisory lock that serialises writers of one key, so that version and
-- create_revision stay exact; writers of different keys never wait for each
-- other (a hash collision only makes two of them wait). Held until commit.
create or replace function walwatch.key_lock(p_key bytea) returns bigint
language sql immutable strict as $$
    select hashtextextended(encode(p_key, 'escape'), 0)
$$;

-- Locks several keys in the order of their locks, so that two writers of the
-- same keys cannot deadlock. put_batch takes its keys' locks in this order
-- too. PL/pgSQL, not SQL: a SQL function is parsed and planned at every
-- call, which cost a transaction locking one key 200 against 100 us of
-- server CPU (pgbench, two clients). One key, a Txn's or a delete's usual
-- case, is a plain expression; more read their subscripts, not unnest,
-- whose row estimate (the array's length) keeps PostgreSQL planning every
-- call afresh once a session's first calls were small.
create or replace function walwatch.lock_keys(p_keys bytea[]) returns void
language plpgsql volatile as $$
begin
    if cardinality(p_keys) = 1 then
        perform pg_advisory_xact_lock(walwatch.key_lock(p_keys[array_lower(p_keys, 1)]));
        return;
    end if;
    perform pg_advisory_xact_lock(hs.h)
       from (select distinct walwatch.key_lock(p_keys[i]) as h from generate_subscripts(p_keys, 1) as i) as hs
      order by hs.h;
end
$$;


-- Writes --------------------------------------------------------------------

-- The row a write of p_key at (p_rev, p_sub) appends, worked out from the
-- key's newest row as etcd counts: a put stores its value (a missing one as
-- empty); a put to a key that has no row, or whose newest row is a
-- tombstone, creates it (create_revision p_rev, version 1), and a later put
-- keeps create_revision and adds one to version; a delete (p_tombstone)
-- stores a tombstone with no value and both 0. prev_revision is the newest
-- row's revision, 0 when there is none; created_at is the transaction's
-- start, as the column's default. The caller holds the key's lock, so no
-- other writer of the key comes in between.
--
-- The one definition of these rules: append and put_batch insert what it
-- returns. It is set-returning, stable and not strict so that the planner
-- inlines it into their inserts: the newest row is read inside the insert,
-- with no call of its own.
create or replace function walwatch.new_row(p_rev bigint, p_sub integer, p_key bytea, p_value bytea,
                                            p_tombstone boolean, p_lease bigint)
returns setof walwatch.kv
language sql stable as $$
    select p_rev, p_sub, p_key,
           case when p_tombstone then null else coalesce(p_value, ''::bytea) end,
           p_tombstone,
           -- prev.tombstone is null when the key has no row
           case when p_tombstone then 0 when prev.tombstone is not false then p_rev else prev.create_revision end,
           case when p_tombstone then 0 when prev.tombstone is not false then 1 else prev.version + 1 end,
           coalesce(prev.revision, 0),
           coalesce(p_lease, 0),
           now()
    from (select) as one
    left join (select k.revision, k.create_revision, k.version, k.tombstone
                 from walwatch.kv k where k.key = p_key
                order by k.revision desc limit 1) as prev on true
$$;

-- Appends one row for p_key at revision p_rev, or at a new revision from the
-- sequence when p_rev is null, and returns the revision written. Takes the
-- key's lock (advisory locks nest, so a caller that holds it already loses
-- nothing).
--
-- A new revision can meet a filler: the watch hub settles a revision that
-- outlives a grace period by inserting (revision, 0) itself. Only the first
-- row of a revision can meet one, and losing to it just means taking the
-- next revision, so no write fails for it. A given revision that is taken
-- is an error.
create or replace function walwatch.append(p_rev bigint, p_sub integer, p_key bytea, p_value bytea,
                                           p_tombstone boolean, p_lease bigint default 0)
returns bigint
language plpgsql volatile as $$
declare
    rev bigint := p_rev;
begin
    if not walwatch.is_key(p_key) then
        perform walwatch.raise_empty_key();
    end if;
    perform pg_advisory_xact_lock(walwatch.key_lock(p_key));
    -- A put with a lease shares the lease's row until commit, so a revoke
    -- cannot delete it meanwhile (and leave the key behind).
    if coalesce(p_lease, 0) <> 0 and not p_tombstone then
        perform 1 from walwatch.lease l where l.id = p_lease for key share;
        if not found then
            perform walwatch.raise_lease_not_found(p_lease);
        end if;
    end if;
    loop
        if p_rev is null then
            rev := nextval('walwatch.revision');
        end if;
        insert into walwatch.kv
        select * from walwatch.new_row(rev, p_sub, p_key, p_value, p_tombstone, p_lease)
        on conflict (revision, sub) do nothing;
        if found then
            return rev;
        end if;
        if p_rev is not null then
            raise exception 'revision % sub % is already taken', p_rev, p_sub using errcode = '23505';
        end if;
    end loop;
end
$$;

-- Puts one key: one revision, one round trip. A plain SQL wrapper, which
-- the planner inlines into the caller's statement.
create or replace function walwatch.put(p_key bytea, p_value bytea, p_lease bigint default 0) returns bigint
language sql volatile as $$
    select walwatch.append(null, 0, p_key, p_value, false, p_lease)
$$;

-- Puts p_values[i] at p_keys[i] for every i, each at a new revision of its
-- own (as in etcd), and returns the revisions in the order given. The Go
-- store sends the puts that arrive while earlier ones are in flight here, in
-- one transaction.
--
-- Keys are locked in the order of their locks, as lock_keys takes them, so
-- that batches and transactions over the same keys cannot deadlock, and
-- each row is built from its key's newest row, read by a statement that
-- began after the key's lock was taken. A batch of 4 distinct keys or more
-- takes every lock and then writes every row with one insert: at 16 puts
-- the server spends about 20% less CPU a put than on an insert a put, at 32
-- about 30%, at 5 to 7 (cp's batches at 32 etcd clients) 10-20% (pgbench,
-- two clients). Below 4 the one insert's fixed cost outweighs what it saves;
-- and a key given twice needs each of its rows to see the one before, which
-- rows of one insert do not. Those batches lock and insert one key at a
-- time, in the order of their locks; a key given twice is written twice, in
-- the order given. The insert reads its keys by subscript, not unnest, so
-- that PostgreSQL keeps one plan for every length (see lock_keys).
--
-- Its rows go in with plain inserts, not append's ON CONFLICT DO NOTHING, a
-- speculative insertion that costs an index probe and one more WAL record
-- per row. So a batch whose new revision the hub has already taken with a
-- filler fails with unique_violation (23505) instead of taking the next
-- one; the Go store then writes its puts one by one through put, which
-- steps over fillers.
create or replace function walwatch.put_batch(p_keys bytea[], p_values bytea[]) returns bigint[]
language plpgsql volatile as $$
declare
    n integer := coalesce(cardinality(p_keys), 0);
    revs bigint[] := '{}';
    i integer;
    k bytea;
    v bytea;
    rev bigint;
    distinct_keys boolean := false;
    all_keys boolean;
    shift integer; -- from a key's subscript to its value's
begin
    if n <> coalesce(cardinality(p_values), 0) then
        raise exception 'put_batch got % keys and % values', n, coalesce(cardinality(p_values), 0)
            using errcode = '22023';
    end if;
    if n >= 4 then
        select count(distinct u.k) = n, bool_and(walwatch.is_key(u.k)) into distinct_keys, all_keys
        from unnest(p_keys) as u(k);
    end if;
    if distinct_keys then
        if not all_keys then
            perform walwatch.raise_empty_key();
        end if;
        perform walwatch.lock_keys(p_keys);
        shift := array_lower(p_values, 1) - array_lower(p_keys, 1);
        with t as materialized (
            select p_keys[u.o] as k, p_values[u.o + shift] as v, u.o, nextval('walwatch.revision') as rev
            from generate_subscripts(p_keys, 1) as u(o)
        ), ins as (
            insert into walwatch.kv
            select r.* from t, lateral walwatch.new_row(t.rev, 0, t.k, t.v, false, 0) as r
        )
        select array_agg(t.rev order by t.o) into revs from t;
        return revs;
    end if;
    for i, k, v in select t.o, t.k, t.v from unnest(p_keys, p_values) with ordinality as t(k, v, o)
                   order by walwatch.key_lock(t.k), t.o loop
        if not walwatch.is_key(k) then
            perform walwatch.raise_empty_key();
        end if;
        perform pg_advisory_xact_lock(walwatch.key_lock(k));
        rev := nextval('walwatch.revision');
        insert into walwatch.kv select * from walwatch.new_row(rev, 0, k, v, false, 0);
        revs[i] := rev;
    end loop;
    return revs;
end
$$;


-- Kubernetes' writes, batched as put_batch batches puts: a Txn that puts
-- a key (or deletes it) if its mod revision is the one given, and else reads
-- it. For each i: when p_keys[i]'s mod revision (0 while it has no row or its
-- newest row is a tombstone) is p_mods[i], puts p_values[i] with lease
-- p_leases[i] at a new revision of its own, or, where p_deletes[i], deletes
-- the key if it is live. One statement, so one round trip and one commit for
-- the whole batch, where a Txn's general path takes two (begin with its
-- locks and reads, then its writes with the commit); the Go store sends the
-- Txns of this shape that arrive together here. The keys must be distinct.
--
-- One row comes back for each i, in order: whether the compare held, the
-- revision written (0: none), the current revision (for a Txn that wrote
-- nothing: the current one once the keys were locked, or the batch's newest
-- write if that is later), and the key's newest row before the write (live
-- false when it has none or it is a tombstone; its fields 0 then). The keys
-- are locked first, in the order of their locks (lock_keys), and read by a
-- statement that began after that; the rows that hold are written by one
-- insert, through new_row. A lease that does not exist, or a new revision
-- the hub has already taken with a filler, fails the whole batch (the Go
-- store then runs its Txns one by one).
create or replace function walwatch.cas_batch(p_keys bytea[], p_mods bigint[], p_values bytea[],
                                              p_leases bigint[], p_deletes boolean[])
returns table (held boolean, written bigint, current_revision bigint, live boolean, mod_revision bigint,
               value bytea, create_revision bigint, version bigint, lease bigint)
language plpgsql volatile as $$
declare
    n integer := coalesce(cardinality(p_keys), 0);
    distinct_keys boolean;
    all_keys boolean;
    l bigint;
    cur bigint;
begin
    if n = 0 then
        return;
    end if;
    if array_lower(p_keys, 1) <> 1
       or n <> coalesce(cardinality(p_mods), 0) or array_lower(p_mods, 1) <> 1
       or n <> coalesce(cardinality(p_values), 0) or array_lower(p_values, 1) <> 1
       or n <> coalesce(cardinality(p_leases), 0) or array_lower(p_leases, 1) <> 1
       or n <> coalesce(cardinality(p_deletes), 0) or array_lower(p_deletes, 1) <> 1 then
        raise exception 'cas_batch needs five arrays of % elements from subscript 1', n
            using errcode = '22023';
    end if;
    select count(distinct u.k) = n, bool_and(walwatch.is_key(u.k)) into distinct_keys, all_keys
      from unnest(p_keys) as u(k);
    if not all_keys then
        perform walwatch.raise_empty_key();
    end if;
    if not distinct_keys then
        raise exception 'cas_batch needs distinct keys' using errcode = '22023';
    end if;
    perform walwatch.lock_keys(p_keys);
    -- As append: a put's lease row is shared until commit.
    for l in select distinct x.l from unnest(p_leases, p_deletes) as x(l, d) where x.l <> 0 and not x.d loop
        perform 1 from walwatch.lease where id = l for key share;
        if not found then
            perform walwatch.raise_lease_not_found(l);
        end if;
    end loop;
    -- The keys are locked: what they hold now is what each Txn reads, at
    -- any revision from now on, its own writes' included.
    cur := walwatch.current_revision();
    -- With synchronous replication, what a Txn that wrote nothing answers
    -- with waits for the standby, as in the Go store's Txns.
    perform walwatch.await_standby();
    -- Every key's newest row, whether its compare holds, and the writes of
    -- those that hold, in one insert.
    return query
    -- t: each key's newest row as a Txn reads it, all zero when the key
    -- is not live (etcd's mod revision of a missing key is 0).
    with t as materialized (
        select u.i, coalesce(not k.tombstone, false) as live,
               case when not k.tombstone then k.revision else 0 end as mod_revision,
               case when not k.tombstone then k.value end as value,
               case when not k.tombstone then k.create_revision else 0 end as create_revision,
               case when not k.tombstone then k.version else 0 end as version,
               case when not k.tombstone then k.lease else 0 end as lease
          from generate_subscripts(p_keys, 1) as u(i)
          left join lateral (select * from walwatch.kv k where k.key = p_keys[u.i]
                              order by k.revision desc limit 1) as k on true
    ), w as materialized (
        select t.i, nextval('walwatch.revision') as rev
          from t
         where t.mod_revision = p_mods[t.i]
           and (not p_deletes[t.i] or t.live)
    ), ins as (
        insert into walwatch.kv
        select r.* from w, lateral walwatch.new_row(w.rev, 0, p_keys[w.i], p_values[w.i], p_deletes[w.i],
                                                    case when p_deletes[w.i] then 0 else p_leases[w.i] end) as r
    )
    select t.mod_revision = p_mods[t.i],
           coalesce(w.rev, 0),
           greatest(cur, (select max(x.rev) from w x)),
           t.live, t.mod_revision, t.value, t.create_revision, t.version, t.lease
      from t left join w on w.i = t.i
     order by t.i;
end
$$;


-- Reads ---------------------------------------------------------------------

-- How many versions a key the range [p_lo, p_hi) holds at or below p_rev
-- (p_hi null: no upper bound), on average over its first 128 index entries:
-- how a range read chooses between walking every version in key order (a
-- DISTINCT ON, cheapest for a few versions a key) and stepping from key to
-- key (newest_rows_skip, which costs a descent of the key index a key, but
-- reads no version it does not return). A range never compacted keeps every
-- version: 10,000 keys of 139 versions each took 2.5 s to read whole by the
-- first, 57-63 ms by the second. An estimate from the start of the range: a
-- range whose keys differ far along it is read the way its start suits.
-- Generic plans, one for each bound, so that no call pays a planning; the
-- bounds are index conditions in either.
create or replace function walwatch.versions_a_key(p_lo bytea, p_hi bytea, p_rev bigint) returns numeric
language plpgsql stable
set plan_cache_mode = force_generic_plan
as $$
declare
    entries numeric;
    keys numeric;
begin
    if p_hi is null then
        select count(*), count(distinct s.key) into entries, keys
          from (select k.key from walwatch.kv k
                 where k.key >= p_lo and k.revision <= p_rev
                 order by k.key, k.revision desc limit 128) s;
    else
        select count(*), count(distinct s.key) into entries, keys
          from (select k.key from walwatch.kv k
                 where k.key >= p_lo and k.key < p_hi and k.revision <= p_rev
                 order by k.key, k.revision desc limit 128) s;
    end if;
    -- Where the range went on past the entries read, their last key likely
    -- has more versions than were read: it counts as none.
    return entries / greatest(case when entries < 128 then keys else keys - 1 end, 1);
end
$$;

-- The newest row at or below p_rev of each key in [p_lo, p_hi) (p_hi null:
-- no upper bound), tombstones included, in key order: a recursive step a
-- key, each the first entry of the key index past the last key whose
-- revision is at or below p_rev, which is the next key's newest such row.
-- The recursion makes one row a step, so its rows come in key order with
-- no sort, and a limit on the caller's statement stops it early. SQL, so
-- that it is inlined into that statement. The upper bound is tested on
-- each step's row, outside its limit: were the bound inside and not folded
-- to a constant, a step past the range would walk the index to its end.
create or replace function walwatch.newest_rows_skip(p_lo bytea, p_hi bytea, p_rev bigint)
returns table (key bytea, row_id tid, tombstone boolean)
language sql stable as $$
    with recursive s(key, row_id, tombstone) as (
        (select f.key, f.row_id, f.tombstone
           from (select k.key, k.ctid as row_id, k.tombstone from walwatch.kv k
                  where k.key >= p_lo and k.revision <= p_rev
                  order by k.key, k.revision desc limit 1) f
          where p_hi is null or f.key < p_hi)
        union all
        (select n.key, n.row_id, n.tombstone
           from s cross join lateral (select k.key, k.ctid as row_id, k.tombstone from walwatch.kv k
                                       where k.key > s.key and k.revision <= p_rev
                                       order by k.key, k.revision desc limit 1) n
          where p_hi is null or n.key < p_hi)
    )
    select s.key, s.row_id, s.tombstone from s
$$;

-- The newest row of each key in [p_lo, p_hi) at or below p_rev, live keys
-- only, in key order, at most p_limit (null: all). p_hi null means no upper
-- bound; the two cases are two queries so that each keeps its index bounds.
-- Planned for each call's values: a cached generic plan guessed a handful
-- of rows and scanned a whole prefix through the key index, then sorted.
-- And with sorts off, so that the plan walks the key index in order and
-- stops at the limit: for a range that is a small part of the table, the
-- planner preferred reading every row of it and sorting them, which for a
-- page of 501 of 10,000 keys of 1.5 KiB values in three versions each (a
-- Kubernetes list) took 95 ms and spilled 47 MB to disk, against 2.4 ms in
-- order; the whole range 130 against 42 ms. A range of more than 16
-- versions a key (versions_a_key) is read key by key instead: on a scratch
-- table, a page of 501 keys took the same either way at 16 versions (1.8
-- against 2.1 ms), 3.3-3.9 against 2.1-2.4 at 30 and 128 against 3.4 at 139.
create or replace function walwatch.latest_rows(p_lo bytea, p_hi bytea, p_rev bigint, p_limit bigint)
returns setof walwatch.kv
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_sort = off
as $$
begin
    if walwatch.versions_a_key(p_lo, p_hi, p_rev) > 16 then
        return query
            select k.* from walwatch.newest_rows_skip(p_lo, p_hi, p_rev) s
             cross join lateral (select * from walwatch.kv k where k.ctid = s.row_id offset 0) k
             where not s.tombstone limit p_limit;
    elsif p_hi is null then
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

-- How many live keys [p_lo, p_hi) holds at revision p_rev (p_hi null: no
-- upper bound), for a range whose limit cut it short: etcd's count. The
-- keys with a row at or below p_rev, less those whose newest such row is a
-- tombstone (a tombstone with nothing newer up to p_rev), both read from
-- indexes (kv_key_revision, kv_tombstones) with sorts off, as in
-- latest_rows, and planned for each call's bounds (a range with no upper
-- bound plans as one): no row of the table is read where the visibility map
-- says its page is all visible. 5,000 keys of three versions among 200,000
-- other rows, vacuumed, counted in 2.2-2.6 ms, where reading each key's
-- newest row for its tombstone flag took 9.3-9.7. A range of more than 32
-- versions a key is counted key by key instead (newest_rows_skip), whose
-- descent a key costs about as much as 30-50 index entries read in order:
-- 2,000 keys of 30 versions counted in 5.6-6.2 ms by the indexes and
-- 8.3-8.8 key by key, 10,000 of 139 in 125-163 against 54-57.
create or replace function walwatch.range_count(p_lo bytea, p_hi bytea, p_rev bigint) returns bigint
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_sort = off
as $$
begin
    if walwatch.versions_a_key(p_lo, p_hi, p_rev) > 32 then
        return (select count(*) from walwatch.newest_rows_skip(p_lo, p_hi, p_rev) s where not s.tombstone);
    end if;
    return (select count(*) from (select distinct on (k.key) k.key from walwatch.kv k
                                   where k.key >= p_lo and (p_hi is null or k.key < p_hi) and k.revision <= p_rev
                                   order by k.key) t)
         - (select count(*) from (select distinct on (d.key) d.key, d.revision from walwatch.kv d
                                   where d.tombstone and d.key >= p_lo and (p_hi is null or d.key < p_hi) and d.revision <= p_rev
                                   order by d.key, d.revision desc) d
             where not exists (select from walwatch.kv n
                                where n.key = d.key and n.revision > d.revision and n.revision <= p_rev));
end
$$;

-- Where the rows of a range's page are (range_page below): the row id
-- (ctid) of each live key's row at revision p_rev (0: the current one) in
-- key order, at most p_limit + 1 of them (p_limit 0: all), then one row
-- with no row id, with the revision read at and the range's count (etcd's:
-- every key, whatever the limit). Planned for each call's bounds with sorts
-- off, and a range of many versions a key read key by key, as latest_rows.
-- A range the limit cuts short is counted from the page's last key on (the
-- page holds every live key before it): a first page of 500 of 1,000 keys
-- of 100 versions counted in 5.4-5.7 ms instead of 7.7-7.9, of 10,000 keys
-- of three in 7.6-7.8 instead of 8.1-8.5. With p_count false it is not
-- counted and its count is null: a caller that read the page before at the
-- same revision knows it already (that count less that page's keys), and
-- counting is most of the first pages' time. Only a page to count is
-- gathered in an array first, for its last key: 10% on a page of 500 keys
-- of three versions (0.87-0.92 ms against 1.00-1.04) where nothing needs
-- it.
create or replace function walwatch.range_page_tids(p_key bytea, p_end bytea, p_rev bigint default 0, p_limit bigint default 0,
    p_count boolean default true)
returns table (revision bigint, count bigint, row_id tid)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_sort = off
as $$
#variable_conflict use_column
declare
    lim bigint := nullif(p_limit, 0);
    hi bytea := walwatch.range_upper(p_key, p_end);
    rev bigint;
    skip boolean;
    ids tid[];
    n bigint;
    total bigint;
begin
    perform walwatch.check_range(p_key, p_limit);
    rev := walwatch.read_revision(p_rev);
    skip := walwatch.versions_a_key(p_key, hi, rev) > 16;
    if lim is null or p_count is not true then
        -- Nothing left to count: the page goes out as it is read.
        if skip then
            return query
                select null::bigint, null::bigint, s.row_id
                  from walwatch.newest_rows_skip(p_key, hi, rev) s
                 where not s.tombstone limit lim + 1;
        else
            return query
                select null::bigint, null::bigint, t.ctid
                  from (select distinct on (k.key) k.ctid, k.key, k.tombstone from walwatch.kv k
                         where k.key >= p_key and (hi is null or k.key < hi) and k.revision <= rev
                         order by k.key, k.revision desc) t
                 where not t.tombstone
                 order by t.key limit lim + 1;
        end if;
        get diagnostics n = row_count;
        return query select rev, case when n <= lim or lim is null then n end, null::tid;
        return;
    end if;
    -- The same walks, gathered in an array for the page's last key: the
    -- page holds every live key up to it, so only the keys after it are
    -- left to count.
    if skip then
        ids := array(select s.row_id
                       from walwatch.newest_rows_skip(p_key, hi, rev) s
                      where not s.tombstone limit lim + 1);
    else
        ids := array(select t.ctid
                       from (select distinct on (k.key) k.ctid, k.key, k.tombstone from walwatch.kv k
                              where k.key >= p_key and (hi is null or k.key < hi) and k.revision <= rev
                              order by k.key, k.revision desc) t
                      where not t.tombstone
                      order by t.key limit lim + 1);
    end if;
    n := cardinality(ids);
    total := n;
    if n > lim then
        select n + walwatch.range_count(k.key || '\x00'::bytea, hi, rev) into total
          from walwatch.kv k where k.ctid = ids[n];
    end if;
    return query
        select null::bigint, null::bigint, u.id from unnest(ids) as u(id)
        union all
        select rev, total, null::tid;
end
$$;

-- The page of a range (etcd's key and range_end) at revision p_rev (0: the
-- current one), for the Go store: the range's live keys in key order, at
-- most p_limit + 1 of them (p_limit 0: all; a row past p_limit says the
-- limit cut the range short), then one row whose key is null, with the
-- revision read at and the range's count (null when p_count is false and
-- the limit cut the range short: range_page_tids). Rows, where
-- walwatch.range answers with arrays, which copied every value four times
-- more.
--
-- The rows are fetched here, by the row ids range_page_tids found, and not
-- in range_page_tids: what a PL/pgSQL function returns is gathered in memory
-- first, and a page of 500 keys of 1 KiB was about 150 pages of memory new
-- to the backend at every call (its allocator gives back what large
-- blocks it frees), 3-4 ms of a page's 7 in cp's backends. SQL, so that
-- PostgreSQL inlines it into the caller's statement: the row ids go through
-- memory, the rows straight out; ordinality keeps them in key order without
-- a sort, and the statement's one snapshot means every row id still finds
-- its row. The fetch is a lateral subquery that cannot be flattened, so that
-- it stays one row id at a time: as a join, a table the statistics take to
-- be small was hashed whole and the page sorted.
create or replace function walwatch.range_page(p_key bytea, p_end bytea, p_rev bigint default 0, p_limit bigint default 0,
    p_count boolean default true)
returns table (revision bigint, count bigint, key bytea, value bytea,
               create_revision bigint, mod_revision bigint, version bigint, lease bigint)
language sql stable as $$
    select t.revision, t.count, k.key, k.value, k.create_revision, k.revision, k.version, k.lease
      from walwatch.range_page_tids(p_key, p_end, p_rev, p_limit, p_count) with ordinality t(revision, count, row_id, n)
      left join lateral (select * from walwatch.kv k where k.ctid = t.row_id offset 0) k on true
     order by t.n
$$;

-- Reads a key or range (etcd's key and range_end) at revision p_rev (0: the
-- current one), at most p_limit keys (0: all), in one snapshot. Returns the
-- revision read at, whether the limit cut the answer short, how many keys
-- the range holds (count, whatever the limit, as etcd's), and the keys as
-- parallel arrays; with p_count_only, the count alone. A single key is read
-- with one index probe rather than through range_page, which plans every
-- call afresh.
create or replace function walwatch.range(p_key bytea, p_end bytea, p_rev bigint default 0, p_limit bigint default 0,
    p_count_only boolean default false,
    out revision bigint, out more boolean, out count bigint, out keys bytea[], out vals bytea[],
    out create_revisions bigint[], out mod_revisions bigint[], out versions bigint[], out leases bigint[])
language plpgsql stable as $$
declare
    lim bigint := nullif(p_limit, 0);
    hi bytea := walwatch.range_upper(p_key, p_end);
    one record;
begin
    perform walwatch.check_range(p_key, p_limit);
    revision := walwatch.read_revision(p_rev);
    more := false;
    keys := '{}'; vals := '{}'; create_revisions := '{}'; mod_revisions := '{}'; versions := '{}'; leases := '{}';
    if hi = walwatch.range_upper(p_key, null) then
        select k.key, k.value, k.create_revision, k.revision, k.version, k.lease, k.tombstone into one
          from walwatch.kv k where k.key = p_key and k.revision <= range.revision
         order by k.revision desc limit 1;
        if one.key is null or one.tombstone then
            count := 0;
        else
            count := 1;
            if not p_count_only then
                keys := array[one.key]; vals := array[one.value]; create_revisions := array[one.create_revision];
                mod_revisions := array[one.revision]; versions := array[one.version]; leases := array[one.lease];
            end if;
        end if;
        return;
    end if;
    if p_count_only then
        count := walwatch.range_count(p_key, hi, revision);
        return;
    end if;
    -- range_page's rows, numbered in the key order they come in.
    select coalesce(array_agg(p.key) filter (where p.key is not null and p.n <= coalesce(lim, p.n)), '{}'),
           coalesce(array_agg(p.value) filter (where p.key is not null and p.n <= coalesce(lim, p.n)), '{}'),
           coalesce(array_agg(p.create_revision) filter (where p.key is not null and p.n <= coalesce(lim, p.n)), '{}'),
           coalesce(array_agg(p.mod_revision) filter (where p.key is not null and p.n <= coalesce(lim, p.n)), '{}'),
           coalesce(array_agg(p.version) filter (where p.key is not null and p.n <= coalesce(lim, p.n)), '{}'),
           coalesce(array_agg(p.lease) filter (where p.key is not null and p.n <= coalesce(lim, p.n)), '{}'),
           coalesce(bool_or(p.key is not null and p.n > lim), false),
           max(p.count)
      into keys, vals, create_revisions, mod_revisions, versions, leases, more, count
      from walwatch.range_page(p_key, p_end, revision, p_limit) with ordinality p(revision, count, key, value,
                 create_revision, mod_revision, version, lease, n);
end
$$;

-- Deletes a key or range (etcd's key and range_end): one revision for all
-- the keys it deletes, none when it deletes nothing. Inside a Txn that
-- already writes at p_rev, its rows follow at sub p_sub onwards. Returns the
-- revision (the current one when nothing was deleted) and the number of keys
-- deleted.
--
-- As in etcd, the keys deleted are exactly those live just below the
-- answer's revision. A writer holding a lower revision may not have
-- committed when the range is first read: one key is locked before it is
-- read, so its writers are done; for a range, the revisions below the
-- answer's are settled (walwatch.settle_below) and the range read again.
-- If that finds a key the first read missed, the delete fails with
-- serialization_failure (40001), which the Go store runs again: every
-- writer locks a key before it takes the revision that writes it, and a
-- reader holding the key's lock relies on that.
create or replace function walwatch.delete_range(p_key bytea, p_end bytea, p_rev bigint default null, p_sub integer default 0,
    out revision bigint, out deleted bigint)
language plpgsql volatile as $$
declare
    hi bytea := walwatch.range_upper(p_key, p_end);
    single boolean := hi = walwatch.range_upper(p_key, null);
    candidates bytea[];
    cur bigint;
    k bytea;
    newest walwatch.kv;
begin
    if not walwatch.is_key(p_key) then
        perform walwatch.raise_empty_key();
    end if;
    revision := p_rev;
    deleted := 0;
    if single then
        perform walwatch.lock_keys(array[p_key]);
        -- The key's newest row is the index's first entry for it, where
        -- latest_rows would read every row the key has: 12 ms for a key
        -- deleted and created again 3,000 times, as a Kubernetes object
        -- that is recreated under one name.
        select * into newest from walwatch.kv where kv.key = p_key order by kv.revision desc limit 1;
        if newest.revision > revision then -- in a Txn, whose revision came first
            raise exception 'delete_range: % was written at revision %, above the delete''s %',
                walwatch.text_of(p_key), newest.revision, revision using errcode = '40001';
        end if;
        if not coalesce(newest.tombstone, true) then
            revision := walwatch.append(revision, p_sub, p_key, null, true);
            deleted := 1;
        elsif revision is null then
            -- Deleted nothing, so wrote nothing: with synchronous
            -- replication, wait for the standby to have the state the answer
            -- shows.
            revision := walwatch.current_revision();
            perform walwatch.await_standby();
        end if;
        return;
    end if;
    loop
        if revision is null then
            cur := walwatch.current_revision();
        end if;
        candidates := array(select l.key from walwatch.latest_rows(p_key, hi, coalesce(revision, cur), null) l);
        if cardinality(candidates) > 0 then
            perform walwatch.lock_keys(candidates);
            foreach k in array candidates loop
                -- A concurrent writer may have written it before we held its lock.
                select * into newest from walwatch.kv where kv.key = k order by kv.revision desc limit 1;
                if newest.revision > revision then -- in a Txn, whose revision came first
                    raise exception 'delete_range: % was written at revision %, above the delete''s %',
                        walwatch.text_of(k), newest.revision, revision using errcode = '40001';
                end if;
                if not newest.tombstone then
                    revision := walwatch.append(revision, p_sub + deleted::integer, k, null, true);
                    deleted := deleted + 1;
                end if;
            end loop;
        end if;
        -- With every revision below the answer's settled, a statement later
        -- (a new snapshot) sees all that committed below it.
        if revision is null then
            perform walwatch.settle_below(cur + 1);
            exit when not exists (select 1 from walwatch.latest_rows(p_key, hi, cur, 1));
        else
            perform walwatch.settle_below(revision);
            exit when not exists (select 1 from walwatch.latest_rows(p_key, hi, revision, 1));
            -- A key put below our revision that we did not lock before taking
            -- it: deleting it now would break the rule every reader relies on,
            -- that a key is locked before the revision that writes it is
            -- taken. Run again: the key is among the candidates then.
            raise exception 'delete_range: a key was put in the range below revision % meanwhile', revision
                using errcode = '40001';
        end if;
    end loop;
    if revision is null then
        -- Deleted nothing, so wrote nothing; settle_below has waited for
        -- the standby.
        revision := cur;
    end if;
end
$$;


-- Compaction ----------------------------------------------------------------

-- Compacts at p_rev: deletes every row no read at or above p_rev can see
-- (rows superseded at or below p_rev, tombstones and fillers below it) and
-- records p_rev. The newest row of a live key always survives; rows at p_rev
-- and above are kept, so a watch from p_rev still sees them. With p_strict,
-- compacting at or below the compacted revision fails as etcd's does;
-- without, it is a no-op.
--
-- It first settles every revision below p_rev (walwatch.settle_below), as
-- etcd's are settled below any revision it can compact at: a write still
-- in flight there would otherwise commit below the compacted revision,
-- where a watch hub starting afresh, which takes everything below it as
-- settled, would never show it.
create or replace function walwatch.compact_to(p_rev bigint, p_strict boolean,
    out compact_revision bigint, out removed bigint)
language plpgsql volatile as $$
#variable_conflict use_column
declare
    old bigint;
    cur bigint;
begin
    cur := walwatch.current_revision();
    if p_rev > cur then
        perform walwatch.raise_future(p_rev, cur);
    end if;
    -- Before the lock on meta, which the hubs' settle takes: this may wait
    -- for a transaction holding a revision.
    perform walwatch.settle_below(p_rev);
    select m.compact_revision into old from walwatch.meta m for update; -- one compaction at a time
    if p_rev <= old then
        if p_strict then
            perform walwatch.raise_compacted(p_rev, old);
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

-- The first revision, in revision order, of a row written at or after p_at;
-- null when every row is older. Rows are stamped with their transaction's
-- start, which follows revision order to within the length of a write
-- transaction, so a binary search over the primary key finds where an age
-- begins in about forty probes, and puts pay for no index on created_at.
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

create or replace function walwatch.compact(p_rev bigint) returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(p_rev, true)
$$;

-- Compacts at the oldest revision written within p_age (or at the current
-- revision when nothing was), so history older than p_age goes.
create or replace function walwatch.compact_older_than(p_age interval) returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(
        coalesce(walwatch.first_revision_since(now() - p_age), walwatch.current_revision()),
        false)
$$;

-- Keeps only the newest row of each live key.
create or replace function walwatch.compact_keep_latest() returns table (compact_revision bigint, removed bigint)
language sql volatile as $$
    select * from walwatch.compact_to(walwatch.current_revision(), false)
$$;



-- Leases --------------------------------------------------------------------

-- A lease, as etcd's: keys put with it are deleted, in one revision, when it
-- is revoked or expires. Its deadline is kept by the database's clock
-- (clock_timestamp, so that a long transaction does not age a keep-alive),
-- and moving it is not watched data: walwatch.lease is not in the
-- publication, so a keep-alive costs one row update and no event.
--
-- Errors callers tell apart by SQLSTATE (store/errors.go):
--   WWL01  lease not found; detail: the lease
--   WWL02  lease already exists; detail: the lease
--   WWL03  lease TTL too large

create or replace function walwatch.raise_lease_not_found(p_id bigint) returns void
language plpgsql as $$
begin
    raise exception 'requested lease % not found', p_id using errcode = 'WWL01', detail = p_id::text;
end
$$;

-- etcd's bounds on a lease's TTL, in seconds: a shorter one is raised to
-- the minimum (etcd's 3/2 of its default election timeout, rounded up), a
-- longer one than the maximum refused.
create or replace function walwatch.min_lease_ttl() returns bigint
language sql immutable as $$ select 2::bigint $$;

create or replace function walwatch.max_lease_ttl() returns bigint
language sql immutable as $$ select 9000000000::bigint $$;

-- Grants a lease of p_ttl seconds with ID p_id, or with an ID of the
-- database's choosing (positive, random, as etcd's) when p_id is 0.
create or replace function walwatch.grant(p_ttl bigint, p_id bigint default 0, out id bigint, out ttl bigint)
language plpgsql volatile as $$
declare
    new_id bigint;
    new_ttl bigint := greatest(coalesce(p_ttl, 0), walwatch.min_lease_ttl());
begin
    if p_ttl > walwatch.max_lease_ttl() then
        raise exception 'lease TTL % is too large (at most %)', p_ttl, walwatch.max_lease_ttl() using errcode = 'WWL03';
    end if;
    if p_id < 0 then
        raise exception 'invalid lease ID %: must be 0 (any) or positive', p_id using errcode = '22023';
    end if;
    loop
        new_id := case when coalesce(p_id, 0) = 0 then 1 + floor(random() * 9223372036854775806)::bigint else p_id end;
        insert into walwatch.lease values (new_id, new_ttl, clock_timestamp() + make_interval(secs => new_ttl))
        on conflict do nothing;
        exit when found;
        if coalesce(p_id, 0) <> 0 then
            raise exception 'lease % already exists', p_id using errcode = 'WWL02', detail = p_id::text;
        end if;
    end loop;
    id := new_id;
    ttl := new_ttl;
end
$$;

-- Renews each lease of p_ids that has not expired to its full TTL, and
-- returns those it renewed with their TTL. One statement for many leases:
-- the Go store sends the keep-alives that arrive together here.
create or replace function walwatch.keep_alive(p_ids bigint[]) returns table (id bigint, ttl bigint)
language sql volatile as $$
    update walwatch.lease l
       set deadline = clock_timestamp() + make_interval(secs => l.ttl)
     where l.id = any(p_ids) and l.deadline > clock_timestamp()
    returning l.id, l.ttl
$$;

-- The keys whose newest row carries lease p_id, in key order.
create or replace function walwatch.lease_keys(p_id bigint) returns setof bytea
language sql stable as $$
    select n.key
      from (select distinct k.key from walwatch.kv k where k.lease = p_id and k.lease <> 0) a
      cross join lateral (select k.key, k.lease, k.tombstone from walwatch.kv k
                           where k.key = a.key order by k.revision desc limit 1) n
     where n.lease = p_id and not n.tombstone
     order by n.key
$$;

-- Revokes lease p_id: deletes every key attached to it at one revision
-- (none when it has no keys), then the lease. Returns that revision (the
-- current one when nothing was deleted) and how many keys went.
--
-- The keys' locks come before the lease's row lock, in the order writers
-- take them (a put with a lease holds its key's lock, then shares the
-- lease's row), so a revoke and a put do not deadlock; a key attached
-- between the first look and the lease's lock is found by the second.
create or replace function walwatch.revoke(p_id bigint, out revision bigint, out deleted bigint)
language plpgsql volatile as $$
declare
    keys bytea[];
    k bytea;
begin
    perform walwatch.lock_keys(array(select walwatch.lease_keys(p_id)));
    perform 1 from walwatch.lease l where l.id = p_id for update;
    if not found then
        perform walwatch.raise_lease_not_found(p_id);
    end if;
    keys := array(select walwatch.lease_keys(p_id));
    perform walwatch.lock_keys(keys); -- those already held cost nothing
    revision := null;
    deleted := 0;
    foreach k in array keys loop
        revision := walwatch.append(revision, deleted::integer, k, null, true);
        deleted := deleted + 1;
    end loop;
    delete from walwatch.lease l where l.id = p_id;
    if revision is null then
        revision := walwatch.current_revision();
    end if;
end
$$;

-- Revokes up to p_limit leases whose deadline has passed, each at a
-- revision of its own, as etcd's leader revokes them, and returns them. The
-- one cp that holds the expiry duty calls it.
create or replace function walwatch.expire_leases(p_limit integer default 1000)
returns table (id bigint, revision bigint, deleted bigint)
language plpgsql volatile as $$
declare
    l record;
begin
    for l in select e.id from walwatch.lease e where e.deadline <= clock_timestamp()
             order by e.deadline limit p_limit loop
        id := l.id;
        begin
            select r.revision, r.deleted into revision, deleted from walwatch.revoke(l.id) r;
        exception when sqlstate 'WWL01' then
            continue; -- revoked by its owner meanwhile
        end;
        return next;
    end loop;
end
$$;

-- Gives every lease its full TTL from now, as etcd's new leader does, so
-- that a lease whose owner kept it alive does not expire while the expiry
-- duty changes hands. Returns how many leases it extended.
create or replace function walwatch.extend_leases() returns bigint
language sql volatile as $$
    with u as (
        update walwatch.lease l set deadline = greatest(l.deadline, clock_timestamp() + make_interval(secs => l.ttl))
        returning 1
    )
    select count(*) from u
$$;

-- A lease's granted TTL and the whole seconds it has left (rounded down, as etcd's),
-- and with p_keys its keys; no row when there is no such lease.
create or replace function walwatch.lease_ttl(p_id bigint, p_keys boolean default false,
    out ttl bigint, out remaining bigint, out keys bytea[])
returns setof record
language sql stable as $$
    select l.ttl,
           greatest(trunc(extract(epoch from l.deadline - clock_timestamp())), 0)::bigint,
           case when p_keys then array(select walwatch.lease_keys(p_id)) else '{}'::bytea[] end
      from walwatch.lease l where l.id = p_id
$$;


-- The watch hub -------------------------------------------------------------

-- Raises the hint of where a hub may start reading (meta.settled_revision);
-- never lowers it.
create or replace function walwatch.settle(p_rev bigint) returns void
language sql volatile as $$
    update walwatch.meta set settled_revision = p_rev where settled_revision < p_rev
$$;

-- Settles revisions no transaction committed, as the watch hub does for a
-- hole that outlives its grace period: inserts a filler at (revision, 0) for
-- each. PostgreSQL makes each insert wait for a transaction still holding
-- that revision; if it commits, the filler does nothing; if it rolled back,
-- or the value was never used, the filler takes it. Returns how many it took.
-- Revisions below the compacted one are settled already (walwatch.compact_to
-- settles before it compacts), and their rows may be gone: a filler there
-- would stand in for a revision that committed. Only a revision below one
-- that committed is a hole: the sequence has handed it out. Above, a filler
-- would take a revision from a writer to come. A hub asks for none of those
-- on the server it reads, but after a failover its last request may reach
-- the promoted standby, whose sequence resumes below what the old primary
-- handed out. (Reading the sequence would need a grant on it.)
create or replace function walwatch.fill(p_revs bigint[]) returns bigint
language sql volatile as $$
    with f as (
        insert into walwatch.kv (revision, sub, key, value, tombstone)
        select r, 0, ''::bytea, null, true from unnest(p_revs) as r
         where r >= (select m.compact_revision from walwatch.meta m)
           and r < (select max(k.revision) from walwatch.kv k)
         order by r
        -- No conflict target: two hubs filling the same revision meet on
        -- the (key, revision) index too, fillers all having the empty key.
        on conflict do nothing
        returning 1
    )
    select count(*) from f
$$;

-- Makes the calling transaction's commit wait for the synchronous standby,
-- as a write's does, when synchronous_standby_names is set: once it has
-- committed, the standby has every commit the transaction could see. A
-- commit is visible on the primary before the standby has it when its wait
-- for the standby was cancelled (a client that gave up and cancelled its
-- query, pg_cancel_backend, pg_terminate_backend, a fast shutdown) or when
-- the primary recovered it after a crash; a failover to the standby then
-- loses it, and a read that showed it showed a write that never was. A read
-- transaction writes nothing and so waits for nothing; this one writes a
-- logical message (a WAL record and a transaction ID; the publication does
-- not carry messages). On a standby, or without synchronous replication,
-- it does nothing.
create or replace function walwatch.await_standby() returns void
language plpgsql volatile as $$
begin
    if current_setting('synchronous_standby_names') <> '' and not pg_is_in_recovery() then
        perform pg_logical_emit_message(true, 'walwatch', ''::bytea);
    end if;
end
$$;

-- Waits until every revision below p_rev is committed or settled, by
-- filling each that has no row (walwatch.fill waits for a transaction that
-- holds one; one that has not written yet moves on to a later revision). A
-- Txn calls it before a read that follows its first write, so that the read
-- sees every write ordered before the Txn's, as etcd's serial Txns do. The
-- revisions at or below the settled and compacted marks need no look, and
-- none the sequence has not handed out yet: filling those would take them
-- from the writers to come (a read at a future revision once filled a
-- thousand).
--
-- With synchronous replication its transaction also waits for the standby
-- (walwatch.await_standby), so that a plain-SQL reader that settles before
-- it reads, as the read protocol asks, reads nothing a failover could lose.
create or replace function walwatch.settle_below(p_rev bigint) returns void
language sql volatile as $$
    select walwatch.fill(array(
        select r from generate_series(
                (select greatest(m.settled_revision, m.compact_revision, 1) from walwatch.meta m) + 1,
                least(p_rev - 1, (select s.last_value from walwatch.revision s))) r
         where not exists (select 1 from walwatch.kv k where k.revision = r)));
    select walwatch.await_standby()
$$;


-- The text API, for psql ----------------------------------------------------

-- Keys and values as text, revisions as bigint:
--   select walwatch.set('/routes/foo', '{"uri":"/get"}');
-- Text goes in as UTF-8. Keys and values are bytes, and anyone may write any
-- bytes through the Go store, so what comes out is shown by text_of.

-- b as text when it is UTF-8 without NUL, else in bytea's hex form ('\x'
-- and hex, as psql shows a bytea), so that no key or value can make a read
-- of its prefix fail. ASCII without NUL, the common case, is recognised
-- without a subtransaction: encode(b, 'escape') escapes exactly NUL, bytes
-- above 0x7f and the backslash, so a result without a backslash is b itself.
create or replace function walwatch.text_of(b bytea) returns text
language plpgsql immutable strict parallel safe as $$
declare
    t text := encode(b, 'escape');
begin
    if strpos(t, '\') = 0 then
        return t;
    end if;
    begin
        return convert_from(b, 'UTF8');
    exception when character_not_in_repertoire then -- invalid UTF-8 or a NUL
        return '\x' || encode(b, 'hex');
    end;
end
$$;

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
    select walwatch.text_of(l.key), walwatch.text_of(l.value), l.revision, l.create_revision, l.version
    from walwatch.latest_rows(convert_to(p_key, 'UTF8'), walwatch.range_upper(convert_to(p_key, 'UTF8'), null),
                              walwatch.read_revision(p_rev), null) l
$$;

create or replace function walwatch.get_all(p_prefix text, p_rev bigint default 0)
returns table (key text, value text, revision bigint, create_revision bigint, version bigint)
language sql stable as $$
    select walwatch.text_of(l.key), walwatch.text_of(l.value), l.revision, l.create_revision, l.version
    from walwatch.latest_rows(convert_to(p_prefix, 'UTF8'),
                              walwatch.range_upper(convert_to(p_prefix, 'UTF8'),
                                                   walwatch.prefix_end(convert_to(p_prefix, 'UTF8'))),
                              walwatch.read_revision(p_rev), null) l
$$;

-- Every change (deletes included, fillers never) to keys with the prefix
-- after revision p_after_rev, in revision order. Fails when changes after
-- p_after_rev have been compacted away. It walks the primary key in revision
-- order and filters by key, as etcd's catch-up reads do, whatever the
-- statistics say: with sorts off, that is the only plan left; right after a
-- bulk write under a new prefix the statistics said the prefix was empty,
-- and the plan they gave read the whole prefix and sorted it.
create or replace function walwatch.changes(p_prefix text, p_after_rev bigint)
returns table (revision bigint, key text, value text, tombstone boolean,
               create_revision bigint, version bigint, prev_revision bigint)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_sort = off
as $$
declare
    lo bytea := convert_to(p_prefix, 'UTF8');
    hi bytea := walwatch.range_upper(lo, walwatch.prefix_end(lo));
    compacted bigint := walwatch.compact_revision();
begin
    if p_after_rev + 1 < compacted then
        perform walwatch.raise_compacted(p_after_rev + 1, compacted);
    end if;
    return query
        select c.revision, walwatch.text_of(c.key), walwatch.text_of(c.value), c.tombstone,
               c.create_revision, c.version, c.prev_revision
          from walwatch.kv c
         where c.key >= lo and (hi is null or c.key < hi) and c.key <> ''::bytea and c.revision > p_after_rev
         order by c.revision, c.sub;
end
$$;
