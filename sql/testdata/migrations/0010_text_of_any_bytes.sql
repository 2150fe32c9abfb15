-- walwatch schema, version 10: the text API shows every key and value, even
-- bytes that are not UTF-8 text.
--
-- Keys and values are bytes, as in etcd, and anyone can write any bytes
-- through the Go store, the HTTP API or (soon) etcd's API. get, get_all
-- and changes converted them with convert_from(..., 'UTF8'), which fails on
-- a NUL byte or invalid UTF-8: one such key made get_all and changes fail for
-- its whole prefix. They now show such bytes as psql shows a bytea, '\x'
-- and hex; text stays text. The byte-level functions (range,
-- changes_between) give every key as it is.

-- walwatch.text_of returns b as text when it is UTF-8 without NUL, else in
-- bytea's hex form. ASCII without NUL, the common case, is recognised without
-- a subtransaction: encode(b, 'escape') escapes exactly NUL, bytes above 0x7f
-- and the backslash, so a result without a backslash is b itself.
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

create or replace function walwatch.get(p_key text, p_rev bigint default 0)
returns table (key text, value text, revision bigint, create_revision bigint, version bigint)
language sql stable as $$
    select walwatch.text_of(l.key), walwatch.text_of(l.value), l.revision, l.create_revision, l.version
    from walwatch.latest_rows(convert_to(p_key, 'UTF8'), convert_to(p_key, 'UTF8') || '\x00'::bytea,
                              walwatch.read_revision(p_rev), null) l
$$;

create or replace function walwatch.get_all(p_prefix text, p_rev bigint default 0)
returns table (key text, value text, revision bigint, create_revision bigint, version bigint)
language sql stable as $$
    select walwatch.text_of(l.key), walwatch.text_of(l.value), l.revision, l.create_revision, l.version
    from walwatch.latest_rows(convert_to(p_prefix, 'UTF8'),
                              nullif(walwatch.prefix_end(convert_to(p_prefix, 'UTF8')), '\x00'::bytea),
                              walwatch.read_revision(p_rev), null) l
$$;

create or replace function walwatch.changes(p_prefix text, p_after_rev bigint)
returns table (revision bigint, key text, value text, tombstone boolean,
               create_revision bigint, version bigint, prev_revision bigint)
language sql stable as $$
    select c.revision, walwatch.text_of(c.key), walwatch.text_of(c.value), c.tombstone,
           c.create_revision, c.version, c.prev_revision
    from walwatch.changes_between(convert_to(p_prefix, 'UTF8'),
                                  nullif(walwatch.prefix_end(convert_to(p_prefix, 'UTF8')), '\x00'::bytea),
                                  p_after_rev, walwatch.current_revision(), null) c
$$;
