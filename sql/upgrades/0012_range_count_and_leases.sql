-- Version 12: walwatch.range answers etcd's count (every key of the range,
-- whatever the limit) and each key's lease, and can count alone. Its result
-- type changed, which create or replace cannot do: drop it here, and
-- functions.sql creates it again.
drop function if exists walwatch.range(bytea, bytea, bigint, bigint);
