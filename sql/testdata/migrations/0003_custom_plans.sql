-- walwatch schema, version 3: plan range scans for the values at hand.
--
-- PL/pgSQL caches a generic plan after five calls on a connection. For these
-- functions the generic plan guesses a handful of rows and scans a whole
-- prefix through the key index, then sorts: a catch-up read of 5,000 rows
-- went from 2.5 ms to 40 ms a page (measured by the watch benchmark). With
-- a custom plan per call the planner sees the bounds and picks the right
-- index.
alter function walwatch.changes_between(bytea, bytea, bigint, bigint, bigint) set plan_cache_mode = force_custom_plan;
alter function walwatch.latest_rows(bytea, bytea, bigint, bigint) set plan_cache_mode = force_custom_plan;
