package upstream

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEcho(t *testing.T) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/anything/x?a=1", strings.NewReader("hello"))
	req.Header.Set("X-Demo", "yes")
	Handler("upstream-a").ServeHTTP(rec, req)
	var e Echo
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatal(err)
	}
	if e.Upstream != "upstream-a" || e.Method != "POST" || e.URL != "/anything/x?a=1" || e.Body != "hello" || e.Headers["X-Demo"] != "yes" || e.Args["a"][0] != "1" {
		t.Fatalf("echo %+v", e)
	}
}
