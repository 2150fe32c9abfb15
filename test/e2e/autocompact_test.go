package e2e_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/walwatch/walwatch/test/wait"
)

// cp --auto-compaction-retention compacts on etcd's schedule (periodic:
// every retention period, the history older than it), logs it and counts
// it in /metrics; a read below the compacted revision then gets 410.
func TestAutoCompaction(t *testing.T) {
	t.Parallel()
	url := newDatabase(t)
	c := startCP(t, url, slotName(t, "autocompact"), "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s")
	first := revisionOf(t, mustStatus(t, "PUT /v1/kv/a", call(t, http.MethodPut, c.url+"/v1/kv/a", "", "1"), http.StatusOK))
	last := revisionOf(t, mustStatus(t, "PUT /v1/kv/a", call(t, http.MethodPut, c.url+"/v1/kv/a", "", "2"), http.StatusOK))
	wait.For(t, "an auto-compaction past the writes", func() bool {
		page := string(mustStatus(t, "cp /metrics", get(t, c.url+"/metrics", ""), http.StatusOK).body)
		return strings.Contains(page, "walwatch_autocompact_revision") && metricValue(t, page, "walwatch_autocompact_revision") >= float64(last)
	})
	mustStatus(t, "GET /v1/kv/a at the first revision", get(t, c.url+"/v1/kv/a?rev="+strconv.FormatInt(first, 10), ""), http.StatusGone)
	mustStatus(t, "GET /v1/kv/a", get(t, c.url+"/v1/kv/a", ""), http.StatusOK)
	if c.count(`msg=auto-compaction `) == 0 {
		t.Errorf("cp logged no auto-compaction:\n%s", tail(c.log(), 2000))
	}
}
