package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// notifyLock is the advisory lock a listener holds (shared) while it listens.
const notifyLock = 9080

// notifySchema is the seed's design, written afresh: an append-only revision
// table whose AFTER INSERT trigger sends every row to the "routes" channel,
// but only while some listener holds the shared advisory lock, so writers
// skip NOTIFY (and the lock it takes at commit) when nobody listens. A writer
// tests for listeners as the seed did: if it can take the lock exclusively,
// nobody holds it shared, and it lets go at once.
var notifySchema = fmt.Sprintf(`
create schema notify;

create sequence notify.revision;

create table notify.config (
    revision    bigint  primary key default nextval('notify.revision'),
    key         text    not null,
    value       bytea,
    tombstone   boolean not null default false,
    create_time bigint  not null default (extract(epoch from clock_timestamp()) * 1000)::bigint
);
create index config_key_revision on notify.config (key, revision desc);

create function notify.config_changed() returns trigger
language plpgsql as $$
begin
    if pg_try_advisory_lock(%[1]d) then
        perform pg_advisory_unlock(%[1]d);
        return null;
    end if;
    perform pg_notify('routes', json_build_object(
        'key', new.key, 'value', encode(new.value, 'base64'), 'revision', new.revision,
        'tombstone', new.tombstone, 'create_time', new.create_time)::text);
    return null;
end
$$;

create trigger config_changed after insert on notify.config
    for each row execute function notify.config_changed();

create function notify.set(p_key text, p_value bytea) returns bigint
language sql volatile as $$
    insert into notify.config (key, value) values (p_key, p_value) returning revision
$$;

create function notify.get(p_key text) returns table (revision bigint, value bytea, create_time bigint)
language sql stable as $$
    select c.revision, c.value, c.create_time
      from (select * from notify.config where key = p_key order by revision desc limit 1) c
     where not c.tombstone
$$;
`, notifyLock)

// notifySystem is the seed's LISTEN/NOTIFY design.
type notifySystem struct {
	clients *pgxpool.Pool
	url     string
}

func newNotifySystem(ctx context.Context, e *env) (*notifySystem, error) {
	clients, err := newPool(ctx, e.notifyURL, maxClients)
	if err != nil {
		return nil, err
	}
	if _, err := clients.Exec(ctx, notifySchema); err != nil {
		clients.Close()
		return nil, fmt.Errorf("create notify schema: %w", err)
	}
	return &notifySystem{clients: clients, url: e.notifyURL}, nil
}

func (s *notifySystem) close() { s.clients.Close() }

func (s *notifySystem) name() string                { return "notify" }
func (s *notifySystem) begin(context.Context) error { return nil }
func (s *notifySystem) end(context.Context) error   { return nil }
func (s *notifySystem) pids() []int                 { return nil }

func (s *notifySystem) put(ctx context.Context, _ int, key, value []byte) error {
	var rev int64
	return s.clients.QueryRow(ctx, "select notify.set($1, $2)", string(key), value).Scan(&rev)
}

func (s *notifySystem) get(ctx context.Context, _ int, key []byte) error {
	var value []byte
	err := s.clients.QueryRow(ctx, "select value from notify.get($1)", string(key)).Scan(&value)
	if err != nil {
		return fmt.Errorf("get %q: %w", key, err)
	}
	return nil
}

// watch is the seed's watcher: one connection that holds the shared lock
// and LISTENs; it filters by prefix itself, as the seed's data plane did.
func (s *notifySystem) watch(ctx context.Context, prefix string, fn func(key []byte)) (func() error, error) {
	conn, err := pgx.Connect(ctx, s.url)
	if err != nil {
		return nil, fmt.Errorf("listener connect: %w", err)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("select pg_advisory_lock_shared(%d)", notifyLock)); err != nil {
		return nil, errors.Join(fmt.Errorf("listener lock: %w", err), conn.Close(ctx))
	}
	if _, err := conn.Exec(ctx, "listen routes"); err != nil {
		return nil, errors.Join(fmt.Errorf("listen: %w", err), conn.Close(ctx))
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() {
		var ev struct {
			Key string `json:"key"`
		}
		for {
			n, err := conn.WaitForNotification(lctx)
			if err != nil {
				if lctx.Err() != nil {
					err = nil
				}
				done <- err
				return
			}
			if err := json.Unmarshal([]byte(n.Payload), &ev); err != nil {
				done <- fmt.Errorf("notification payload: %w", err)
				return
			}
			if len(ev.Key) >= len(prefix) && ev.Key[:len(prefix)] == prefix {
				fn([]byte(ev.Key))
			}
		}
	}()
	return func() error {
		cancel()
		err := <-done
		// The listener's connection may be closed by the cancelled wait;
		// closing it again is harmless and releases the lock either way.
		_ = conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("listener: %w", err)
		}
		return nil
	}, nil
}
