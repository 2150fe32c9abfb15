package store

import (
	"bytes"
	"sync"
)

// A Kubernetes list, and etcd's Range streamed in chunks, read a range page
// by page at one revision, each page from the key after the last one's, and
// etcd answers every page with the count of the range from its key on. That
// count is half a first page's time in PostgreSQL or more (5,000 keys in
// three versions: 2.8 of 5.7 ms vacuumed, 7 of 9 ms before), but at one
// revision a range never changes, so the count from the key after a page
// is the page's count less its keys. pageCounts keeps it for the page that
// asks next.
//
// Only pages read at a revision the caller names keep one, and pages read at
// the current revision that the caller says saw every write below it
// (CarryCount): a read at the current revision may run before every write
// below that revision has committed (a Client waits for those before it
// names a revision, and knows from its hub when a read did not). A page read
// through the Store at a revision not yet settled can change, and so can
// the count kept from it; one that no longer fits the page it is given to
// is counted again.
type pageCounts struct {
	mu    sync.Mutex
	count map[pageAt]int64
}

// maxPageCounts bounds the counts kept. A list takes its count as it reads
// the next page, so what fills them is lists left unfinished; when full,
// all are forgotten.
const maxPageCounts = 256

// pageAt is a page of a range: from key to end at rev.
type pageAt struct {
	key, end string
	rev      int64
}

// take returns, and forgets, the count kept for req's page.
func (c *pageCounts) take(req RangeRequest) (int64, bool) {
	at := pageAt{string(req.Key), string(req.End), req.Revision}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.count[at]
	if ok {
		delete(c.count, at)
	}
	return n, ok
}

// keep keeps the count of the page after res, which req read, when the
// limit cut it short.
func (c *pageCounts) keep(req RangeRequest, res RangeResponse) {
	if !res.More || len(res.KVs) == 0 {
		return
	}
	last := res.KVs[len(res.KVs)-1].Key
	next := append(bytes.Clone(last), 0)
	at := pageAt{string(next), string(req.End), res.Revision}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.count == nil || len(c.count) >= maxPageCounts {
		c.count = make(map[pageAt]int64)
	}
	c.count[at] = res.Count - int64(len(res.KVs))
}

// CarryCount keeps the count after res, a page req read at the current
// revision, for the range's next page at res.Revision, as a page read at a
// named revision keeps it. The caller vouches that the read's snapshot held
// every write at or below res.Revision: a Client does when its hub had
// seen them all visible before the read began.
func (s *Store) CarryCount(req RangeRequest, res RangeResponse) {
	// keep passes over a page the limit did not cut short, which a
	// count-only read, a single key or a read with no limit never is.
	if req.Revision == 0 && !req.NoCount {
		s.counts.keep(req, res)
	}
}
