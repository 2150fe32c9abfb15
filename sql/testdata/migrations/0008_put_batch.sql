-- walwatch schema, version 8: concurrent puts share a transaction.
--
-- Each put is its own transaction, and at 32 clients on two cores the
-- per-transaction work (the round trip, the commit record, its flush, the
-- snapshot) costs more than the put's row: eight puts in one transaction
-- reached 17k puts/s where single puts reached 6.5k (pgbench on a scratch
-- cluster, medians of three interleaved rounds). The Go store gathers the
-- puts that arrive while earlier ones are in flight and sends them here,
-- as etcd's apply loop batches its writes. Every put keeps a revision of its
-- own, as in etcd.

-- Puts p_values[i] at p_keys[i] for every i, each at a new revision, and
-- returns the revisions in the same order. Keys are written in the order of
-- their locks, as lock_keys takes them, so batches and transactions over the
-- same keys cannot deadlock; a key given twice is written twice.
create or replace function walwatch.put_batch(p_keys bytea[], p_values bytea[]) returns bigint[]
language plpgsql volatile as $$
declare
    n integer := coalesce(cardinality(p_keys), 0);
    revs bigint[] := '{}';
    i integer;
begin
    if n <> coalesce(cardinality(p_values), 0) then
        raise exception 'put_batch got % keys and % values', n, coalesce(cardinality(p_values), 0)
            using errcode = '22023';
    end if;
    for i in select t.o from unnest(p_keys) with ordinality as t(k, o)
             order by walwatch.key_lock(t.k), t.o loop
        revs[i] := walwatch.append(null, 0, p_keys[i], p_values[i], false, 0);
    end loop;
    return revs;
end
$$;
