-- Version 22: an index of the tombstones, so that walwatch.range_count
-- (functions.sql) counts a range from the indexes alone. Built in the
-- migration's transaction, which holds writes back while it reads the
-- table once.
create index kv_tombstones on walwatch.kv (key, revision desc) where tombstone;
