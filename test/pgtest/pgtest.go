// Package pgtest gives tests a real PostgreSQL: one shared cluster per test
// binary, started by test/pgcluster on first use and stopped after the
// tests, a fresh database for each test, and private clusters for tests that
// restart or crash the server. It never skips: a machine without PostgreSQL
// fails loudly instead of passing vacuously.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/pgcluster"
)

// testStartTimeout bounds starting a cluster from a test helper; a slow CI
// machine may need more than the usual second or two.
const testStartTimeout = 2 * time.Minute

// shared is the one cluster per test binary. It starts on first use so that
// packages whose tests never ask for a database pay nothing.
var shared struct {
	once    sync.Once
	cluster *pgcluster.Cluster
	err     error
}

var (
	// inMain records that Main is running, i.e. someone will stop the
	// shared cluster after the tests.
	inMain atomic.Bool
	// dbSeq makes database names unique within the test binary.
	dbSeq atomic.Int64
)

// Main runs the tests and then stops the shared cluster if any test started
// it. Use it as: func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	inMain.Store(true)
	code := m.Run()

	// Closing the Once also orders this read after every test's start.
	shared.once.Do(func() { shared.err = errors.New("pgtest: Main has already returned") })
	if shared.cluster == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := shared.cluster.Stop(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stopping the shared test cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Shared returns the test binary's shared cluster, starting it if needed.
// It fails the test if the cluster cannot start; it never skips, so a
// machine without PostgreSQL fails loudly instead of passing vacuously.
func Shared(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	c, err := sharedCluster()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sharedCluster returns the shared cluster, starting it on first use.
func sharedCluster() (*pgcluster.Cluster, error) {
	if !inMain.Load() {
		return nil, errors.New("pgtest: the shared cluster needs TestMain to call os.Exit(pgtest.Main(m)), which stops it after the tests")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testStartTimeout)
		defer cancel()
		shared.cluster, shared.err = pgcluster.Start(ctx, pgcluster.Options{})
	})
	if shared.err != nil {
		return nil, fmt.Errorf("pgtest: starting the shared test cluster: %w", shared.err)
	}
	return shared.cluster, nil
}

// CreateDatabase creates a fresh database in the shared cluster for code
// that has no testing.TB, an Example for one, and returns its connection
// string. name starts the database's name. The database is not dropped: it
// goes with the cluster when Main returns.
func CreateDatabase(ctx context.Context, name string) (string, error) {
	c, err := sharedCluster()
	if err != nil {
		return "", err
	}
	connString, err := c.CreateDatabase(ctx, databaseName(name, dbSeq.Add(1)))
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return connString, nil
}

// NewDatabase creates a fresh database in the shared cluster and returns its
// connection string. The database is dropped, with its connections, when
// the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	name := databaseName(t.Name(), dbSeq.Add(1))

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	connString, err := c.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return connString
}

// StartPrivate starts a cluster of the test's own, for tests that restart or
// crash the server. It is stopped when the test ends.
func StartPrivate(t testing.TB, opts pgcluster.Options) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testStartTimeout)
	defer cancel()
	c, err := pgcluster.Start(ctx, opts)
	if err != nil {
		t.Fatalf("pgtest: starting a private cluster: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c
}

// databaseName turns a test name into a readable, unique database name
// within PostgreSQL's 63-byte identifier limit.
func databaseName(testName string, seq int64) string {
	const maxPrefix = 40
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if b.Len() == maxPrefix {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return fmt.Sprintf("%s_%d", b.String(), seq)
}

// PrivateDatabase starts a cluster of the test's own with opts, as
// StartPrivate does, and returns it with the connection string of a database
// named walwatch in it.
func PrivateDatabase(t testing.TB, opts pgcluster.Options) (*pgcluster.Cluster, string) {
	t.Helper()
	c := StartPrivate(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	url, err := c.CreateDatabase(ctx, "walwatch")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return c, url
}

// StartStandby starts a streaming standby of primary (pgcluster.StartStandby),
// stopped when the test ends.
func StartStandby(t testing.TB, primary *pgcluster.Cluster, opts pgcluster.StandbyOptions) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testStartTimeout)
	defer cancel()
	c, err := pgcluster.StartStandby(ctx, primary, opts)
	if err != nil {
		t.Fatalf("pgtest: starting a standby: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c
}
