package e2e_test

import (
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walwatch/walwatch/test/wait"
)

// TestBigValuesKeepMemoryBounded puts 1 MiB values through PUT /v1/kv/...
// from 4 clients while a watch streams them, and samples cp's heap from its
// /metrics all along: it must stay within what cp's byte bounds allow, not
// follow what was written. (The issue: the window kept 4,096 revisions
// whatever their size, and 3,000 such puts took cp to 4.9 GB RSS; with the
// old window these 300 puts alone keep 300 MiB live.)
func TestBigValuesKeepMemoryBounded(t *testing.T) {
	const (
		clients      = 4
		putsEach     = 75 // 300 MiB written in all
		valueSize    = 1 << 20
		windowBytes  = 8 << 20
		bufferBytes  = 8 << 20
		watcherBytes = 4 << 20
		// What the bounds let cp hold (window, buffer, one stream's queue,
		// its pending response and the one it is writing), plus the puts in
		// flight and the stream's encoding (a few MiB each), doubled for
		// garbage the collector has not reclaimed yet (GOGC=100), with a
		// margin: well below the 300 MiB the old window kept live.
		heapBound = 160 << 20
	)
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "mem"),
		"--window-bytes", "8MiB", "--buffer-bytes", "8MiB", "--watcher-bytes", "4MiB")

	var (
		peak    atomic.Int64
		samples atomic.Int64
		stop    = make(chan struct{})
		sampled sync.WaitGroup
	)
	sample := func() {
		if v, ok := heapInUse(c); ok {
			samples.Add(1)
			for old := peak.Load(); v > old && !peak.CompareAndSwap(old, v); old = peak.Load() {
			}
		}
	}
	sampled.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond) // sampling period, not a wait for a result
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				sample()
			}
		}
	})
	defer func() { close(stop); sampled.Wait() }()

	// One watcher reads every change as it comes, as a data plane would.
	s := openWatch(t, c.url+"/v1/watch?prefix=/bigv/")
	var got atomic.Int64
	go func() {
		for m := range s.msgs {
			if m.Event == "put" {
				got.Add(1)
			}
		}
	}()

	// Printable values (JSON carries them as they are), one random base
	// with a different prefix for each put.
	raw := make([]byte, valueSize*3/4)
	for i := range raw {
		raw[i] = byte(rand.Uint32())
	}
	base := base64.RawURLEncoding.EncodeToString(raw)
	var (
		puts   sync.WaitGroup
		mu     sync.Mutex
		failed []string
	)
	for g := range clients {
		puts.Go(func() {
			for i := range putsEach {
				n := g*putsEach + i
				value := fmt.Sprintf("%06d", n) + base[6:]
				r := call(t, http.MethodPut, fmt.Sprintf("%s/v1/kv/bigv/%d", c.url, n), "", value)
				if r.status != http.StatusOK {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("PUT /v1/kv/bigv/%d: %s", n, r))
					mu.Unlock()
					return
				}
			}
		})
	}
	puts.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d puts failed, the first: %s", len(failed), failed[0])
	}
	wait.For(t, fmt.Sprintf("the watcher to have all %d puts", clients*putsEach), func() bool {
		return got.Load() >= clients*putsEach
	})
	for range 5 {
		sample()
	}

	t.Logf("cp heap in use: peak %.1f MiB over %d samples (bound %d MiB; window %d MiB, buffer %d MiB, watcher %d MiB; %d MiB written)",
		float64(peak.Load())/(1<<20), samples.Load(), heapBound>>20, windowBytes>>20, bufferBytes>>20, watcherBytes>>20, clients*putsEach*valueSize>>20)
	if samples.Load() == 0 {
		t.Fatal("no sample of cp's heap")
	}
	if p := peak.Load(); p > heapBound {
		t.Errorf("cp's heap in use peaked at %.1f MiB, over the %d MiB its byte bounds allow", float64(p)/(1<<20), heapBound>>20)
	}
	if w := metricValue(t, string(get(t, c.url+"/metrics", "").body), "walwatch_hub_window_bytes"); w > windowBytes {
		t.Errorf("the window holds %.0f bytes, over --window-bytes %d", w, windowBytes)
	}
}

var heapInUseRE = regexp.MustCompile(`(?m)^go_memstats_heap_inuse_bytes (\S+)$`)

// heapInUse reads go_memstats_heap_inuse_bytes from cp's /metrics; it may
// be called from any goroutine, so it reports failure instead of failing.
func heapInUse(c *cp) (int64, bool) {
	resp, err := httpClient.Get(c.url + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false
	}
	m := heapInUseRE.FindSubmatch(page)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	return int64(v), err == nil
}
