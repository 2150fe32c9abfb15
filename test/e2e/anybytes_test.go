package e2e_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// anyKV is a key-value as the HTTP API, the watch stream and the CLI's JSON
// show it: bytes that are not UTF-8 travel in the _base64 fields.
type anyKV struct {
	Key         string `json:"key"`
	KeyBase64   string `json:"key_base64"`
	Value       string `json:"value"`
	ValueBase64 string `json:"value_base64"`
}

// TestAnyBytes writes keys and values that are not UTF-8 text through the
// HTTP API, and reads them back, with their neighbours, through every
// interface: none is lost, none breaks a read of another key.
func TestAnyBytes(t *testing.T) {
	t.Parallel()
	pg := newDatabase(t)
	c := startCP(t, pg, slotName(t, "bytes"))
	w := openWatch(t, c.url+"/v1/watch?prefix=/b/")

	b64 := base64.StdEncoding.EncodeToString
	writes := []struct {
		path, value string
		want        anyKV
	}{
		{"/v1/kv/b/bad%FF%FE", "\xff", anyKV{KeyBase64: b64([]byte("/b/bad\xff\xfe")), ValueBase64: b64([]byte("\xff"))}},
		{"/v1/kv/b/nul%00key", "v\x00", anyKV{Key: "/b/nul\x00key", Value: "v\x00"}},
		{"/v1/kv/b/ok", "text", anyKV{Key: "/b/ok", Value: "text"}},
	}
	var want []anyKV
	for _, wr := range writes {
		mustStatus(t, "PUT "+wr.path, call(t, http.MethodPut, c.url+wr.path, "", wr.value), http.StatusOK)
		want = append(want, wr.want)
	}

	for i, wr := range writes {
		var got anyKV
		if err := json.Unmarshal(w.next(t).Data, &got); err != nil || got != wr.want {
			t.Errorf("watch event %d: %+v (%v), want %+v", i, got, err, wr.want)
		}
	}

	sortKVs := func(kvs []anyKV) {
		slices.SortFunc(kvs, func(a, b anyKV) int { return strings.Compare(a.Key+a.KeyBase64, b.Key+b.KeyBase64) })
	}
	sortKVs(want)
	var list struct{ KVs []anyKV }
	r := mustStatus(t, "GET /v1/kv/b/?prefix=true", get(t, c.url+"/v1/kv/b/?prefix=true", ""), http.StatusOK)
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	if sortKVs(list.KVs); !slices.Equal(list.KVs, want) {
		t.Errorf("GET /v1/kv/b/?prefix=true: %+v, want %+v", list.KVs, want)
	}

	list.KVs = nil
	if err := json.Unmarshal([]byte(runCLI(t, pg, "get", "/b/", "--prefix", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if sortKVs(list.KVs); !slices.Equal(list.KVs, want) {
		t.Errorf("walwatch get /b/ --prefix -o json: %+v, want %+v", list.KVs, want)
	}

	got := execSQL(t, pg, `select string_agg(key, ',' order by key) from walwatch.get_all('/b/')`)
	if want := `/b/ok,\x2f622f626164fffe,\x2f622f6e756c006b6579`; got != want {
		t.Errorf("walwatch.get_all('/b/') keys: %q, want %q", got, want)
	}
}
