package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// ReadSlot makes the logical slot name of the database at url active until
// the test ends: a replication connection streams from it, as a hub would.
// START_REPLICATION succeeds without the publication it names: pgoutput
// looks it up only when there is a change to send.
func ReadSlot(t testing.TB, url, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, url+"&replication=database")
	if err != nil {
		t.Fatalf("pgtest: replication connection: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	err = pglogrepl.StartReplication(ctx, conn, name, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'x'"},
	})
	if err != nil {
		t.Fatalf("pgtest: read slot %s: %v", name, err)
	}
}
