package e2e_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/walwatch/walwatch/test/pgtest"
	"github.com/walwatch/walwatch/test/wait"
)

// A cp started with --keyspace-copy answers etcd gets and HTTP gets of one
// key from its copy, showing writes made in plain SQL (another server's)
// just before, and says so in /metrics.
func TestKeyspaceCopyAnswersGets(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	addr := pgtest.FreeAddr(t)
	c := startCP(t, pg, slotName(t, "keyspace"), "--etcd-listen", addr, "--keyspace-copy")
	etcd := newEtcdClient(t, addr)
	sqlSet(t, pg, "/ks/before", "loaded")
	wait.For(t, "the keyspace copy to be live", func() bool {
		return metricValue(t, string(get(t, c.url+"/metrics", "").body), "walwatch_keyspace_copy_live") == 1
	})
	for i, value := range []string{"one", "two", "three"} {
		rev := sqlSet(t, pg, "/ks/key", value)
		got, err := etcd.Get(t.Context(), "/ks/key")
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != value || got.Kvs[0].ModRevision != rev || got.Header.Revision < rev {
			t.Fatalf("write %d at %d: etcd get answered %v at %d", i, rev, got.Kvs, got.Header.Revision)
		}
		body := string(mustStatus(t, "GET /v1/kv/ks/key", call(t, http.MethodGet, c.url+"/v1/kv/ks/key", "", nil), http.StatusOK).body)
		if !strings.Contains(body, value) {
			t.Fatalf("write %d: HTTP get answered %s", i, body)
		}
	}
	page := string(get(t, c.url+"/metrics", "").body)
	if n := metricValue(t, page, "walwatch_keyspace_copy_reads_total"); n < 6 {
		t.Errorf("walwatch_keyspace_copy_reads_total %v after 6 reads of one key", n)
	}
	if n := metricValue(t, page, "walwatch_keyspace_copy_keys"); n != 2 {
		t.Errorf("walwatch_keyspace_copy_keys %v, want 2", n)
	}
	// "one" and "two" were replaced: twice /ks/key's 7 bytes and 3 of value.
	if n := metricValue(t, page, "walwatch_keyspace_copy_history_bytes"); n != 20 {
		t.Errorf("walwatch_keyspace_copy_history_bytes %v, want 20", n)
	}
}
