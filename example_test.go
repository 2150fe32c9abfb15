package walwatch_test

import (
	"context"
	"fmt"
	"log"
	"maps"
	"slices"
	"time"

	"github.com/walwatch/walwatch"
	"github.com/walwatch/walwatch/replication"
	"github.com/walwatch/walwatch/store"
	"github.com/walwatch/walwatch/test/pgtest"
)

// databaseURL is where an example connects: a fresh database of the test
// cluster. A program takes its connection string from its configuration
// (DATABASE_URL, say).
func databaseURL() string {
	url, err := pgtest.CreateDatabase(context.Background(), "example")
	if err != nil {
		log.Fatal(err)
	}
	return url
}

// Put, get, and watch from the revision after the read, as with etcd's
// clientv3: nothing between the read and the watch is missed.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := walwatch.Open(ctx, databaseURL(), walwatch.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Put(ctx, []byte("/config/color"), []byte("blue")); err != nil {
		log.Fatal(err)
	}
	// A read at the latest revision sees the client's own writes.
	res, err := c.Get(ctx, store.Key([]byte("/config/color")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s=%s at revision %d\n", res.KVs[0].Key, res.KVs[0].Value, res.Revision)

	w, err := c.Watch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/config/")), StartRevision: res.Revision + 1})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	if _, err := c.Put(ctx, []byte("/config/size"), []byte("XL")); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Delete(ctx, store.Key([]byte("/config/color"))); err != nil {
		log.Fatal(err)
	}
	for seen := 0; seen < 2; {
		resp, ok := <-w.C
		if !ok {
			log.Fatal(w.Err())
		}
		for _, ev := range resp.Events {
			fmt.Printf("%s %s=%s at revision %d\n", ev.Type, ev.Key, ev.Value, ev.Revision)
			seen++
		}
	}
	// Output:
	// /config/color=blue at revision 2
	// PUT /config/size=XL at revision 3
	// DELETE /config/color= at revision 4
}

// Keep a copy of every key under a prefix: list it, then apply the watch's
// events, which start right after the list.
func ExampleClient_ListAndWatch() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := walwatch.Open(ctx, databaseURL(), walwatch.WithMigrate())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for _, name := range []string{"a", "b"} {
		if _, err := c.Put(ctx, []byte("/routes/"+name), []byte("upstream-"+name)); err != nil {
			log.Fatal(err)
		}
	}

	res, w, err := c.ListAndWatch(ctx, replication.WatchRequest{Range: store.Prefix([]byte("/routes/"))})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	routes := map[string]string{}
	for _, kv := range res.KVs {
		routes[string(kv.Key)] = string(kv.Value)
	}
	fmt.Printf("listed %d routes at revision %d\n", len(routes), res.Revision)

	put, err := c.Put(ctx, []byte("/routes/c"), []byte("upstream-c"))
	if err != nil {
		log.Fatal(err)
	}
	for rev := res.Revision; rev < put.Revision; {
		resp, ok := <-w.C
		if !ok {
			log.Fatal(w.Err())
		}
		for _, ev := range resp.Events {
			if ev.Type == replication.EventDelete {
				delete(routes, string(ev.Key))
			} else {
				routes[string(ev.Key)] = string(ev.Value)
			}
			rev = ev.Revision
		}
	}
	for _, k := range slices.Sorted(maps.Keys(routes)) {
		fmt.Println(k, routes[k])
	}
	// Output:
	// listed 2 routes at revision 3
	// /routes/a upstream-a
	// /routes/b upstream-b
	// /routes/c upstream-c
}
