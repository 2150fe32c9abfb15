package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
)

// floorSystem is the physical limit of a logical-replication watch on this
// machine: walwatch's row written with a plain INSERT and read by a bare
// pglogrepl consumer in this process, no hub. walwatch's distance to it is
// the overhead walwatch owns.
type floorSystem struct {
	url     string
	clients *pgxpool.Pool
	slots   atomic.Int64
}

func newFloorSystem(ctx context.Context, e *env) (*floorSystem, error) {
	clients, err := newPool(ctx, e.notifyURL, maxClients)
	if err != nil {
		return nil, err
	}
	ddl, err := floorDDL(ctx, e)
	if err == nil {
		_, err = clients.Exec(ctx, ddl)
	}
	if err != nil {
		clients.Close()
		return nil, fmt.Errorf("floor schema: %w", err)
	}
	return &floorSystem{url: e.notifyURL, clients: clients}, nil
}

// floorDDL makes the floor's table, floor.kv, a copy of walwatch.kv (its
// columns, defaults and indexes, read from the walwatch database's
// catalog), written by a plain INSERT whose revision is a sequence
// default: no function, no lock, no settling.
func floorDDL(ctx context.Context, e *env) (string, error) {
	rows, err := e.admin.Query(ctx, `select a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
	                                        case when a.attnotnull then ' not null' else '' end ||
	                                        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
	                                   from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
	                                  where a.attrelid = 'walwatch.kv'::regclass and a.attnum > 0 and not a.attisdropped
	                                  order by a.attnum`)
	if err != nil {
		return "", err
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	// Index names are per schema: PostgreSQL names the copies.
	rows, err = e.admin.Query(ctx, `select 'create index' || substr(def, strpos(def, ' ON ')) || ';'
	                                  from (select replace(pg_get_indexdef(indexrelid), 'walwatch.kv', 'floor.kv') as def
	                                          from pg_index where indrelid = 'walwatch.kv'::regclass and not indisprimary) i`)
	if err != nil {
		return "", err
	}
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	return "create schema floor;\ncreate sequence floor.revision;\n" +
		"create table floor.kv (" + strings.Join(cols, ", ") + ", primary key (revision, sub));\n" +
		strings.Join(indexes, "\n") + "\n" +
		"alter table floor.kv alter revision set default nextval('floor.revision');\n" +
		"create publication floor for table floor.kv;\n", nil
}

func (s *floorSystem) close()                      { s.clients.Close() }
func (s *floorSystem) name() string                { return "floor" }
func (s *floorSystem) begin(context.Context) error { return nil }
func (s *floorSystem) end(context.Context) error   { return nil }
func (s *floorSystem) pids() []int                 { return nil }

func (s *floorSystem) put(ctx context.Context, _ int, key, value []byte) error {
	if _, err := s.clients.Exec(ctx, "insert into floor.kv (key, value) values ($1, $2)", key, value); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

func (s *floorSystem) get(ctx context.Context, _ int, key []byte) error {
	var v []byte
	if err := s.clients.QueryRow(ctx, "select value from floor.kv where key = $1 order by revision desc limit 1", key).Scan(&v); err != nil {
		return fmt.Errorf("get %q: %w", key, err)
	}
	return nil
}

// watch reads the floor's publication from a temporary slot of its own
// and calls fn with each inserted key under prefix.
func (s *floorSystem) watch(ctx context.Context, prefix string, fn func(key []byte)) (func() error, error) {
	conn, err := pgconn.Connect(ctx, s.url+"&replication=database")
	if err != nil {
		return nil, fmt.Errorf("floor: replication connect: %w", err)
	}
	slot := fmt.Sprintf("floor_%d", s.slots.Add(1))
	created, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{Temporary: true})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("floor: create slot: %w", err), conn.Close(ctx))
	}
	start, err := pglogrepl.ParseLSN(created.ConsistentPoint)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("floor: slot's consistent point: %w", err), conn.Close(ctx))
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'floor'"}})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("floor: start replication: %w", err), conn.Close(ctx))
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- consume(lctx, conn, start, []byte(prefix), fn) }()
	return func() error {
		cancel()
		err := <-done
		return errors.Join(err, conn.Close(context.Background()))
	}, nil
}

// consume reads the stream until ctx ends, confirming what it read every
// second and when asked.
func consume(ctx context.Context, conn *pgconn.PgConn, pos pglogrepl.LSN, prefix []byte, fn func(key []byte)) error {
	keyCol := -1
	nextStatus := time.Now().Add(time.Second)
	for {
		if time.Now().After(nextStatus) {
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos}); err != nil {
				return ignoreEnd(ctx, fmt.Errorf("floor: status update: %w", err))
			}
			nextStatus = time.Now().Add(time.Second)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		raw, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			return ignoreEnd(ctx, fmt.Errorf("floor: receive: %w", err))
		}
		cd, ok := raw.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return fmt.Errorf("floor: keepalive: %w", err)
			}
			pos = max(pos, ka.ServerWALEnd)
			if ka.ReplyRequested {
				nextStatus = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return fmt.Errorf("floor: xlog data: %w", err)
			}
			msg, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return fmt.Errorf("floor: decode: %w", err)
			}
			switch m := msg.(type) {
			case *pglogrepl.RelationMessage:
				for i, c := range m.Columns {
					if c.Name == "key" {
						keyCol = i
					}
				}
			case *pglogrepl.InsertMessage:
				if keyCol < 0 || keyCol >= len(m.Tuple.Columns) {
					return errors.New("floor: an insert before its relation")
				}
				key, err := byteaText(m.Tuple.Columns[keyCol].Data)
				if err != nil {
					return err
				}
				if bytes.HasPrefix(key, prefix) {
					fn(key)
				}
			case *pglogrepl.CommitMessage:
				pos = max(pos, m.TransactionEndLSN)
			}
		}
	}
}

// byteaText decodes bytea's text form, as pgoutput sends it: \x and hex.
func byteaText(b []byte) ([]byte, error) {
	if !bytes.HasPrefix(b, []byte(`\x`)) {
		return nil, fmt.Errorf("floor: bytea %q not in hex form", b)
	}
	out := make([]byte, hex.DecodedLen(len(b)-2))
	if _, err := hex.Decode(out, b[2:]); err != nil {
		return nil, fmt.Errorf("floor: bytea: %w", err)
	}
	return out, nil
}

// ignoreEnd drops err once ctx has ended: the watcher was stopped.
func ignoreEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}
