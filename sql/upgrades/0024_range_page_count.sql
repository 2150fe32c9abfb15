-- Version 24: range_page and range_page_tids take p_count (functions.sql).
-- Their four-argument versions go, so that a call with four arguments, as
-- walwatch.range and older walwatch binaries make, finds the one function
-- whose p_count defaults to true, and not two.
drop function if exists walwatch.range_page(bytea, bytea, bigint, bigint);
drop function if exists walwatch.range_page_tids(bytea, bytea, bigint, bigint);
