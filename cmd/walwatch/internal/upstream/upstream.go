// Package upstream is the demo's built-in upstream: an echo server in the
// manner of httpbin, so the walkthrough needs no network beyond this host.
package upstream

import (
	"encoding/json"
	"io"
	"net/http"
)

// maxBody bounds the request body it echoes.
const maxBody = 64 << 10

// Echo is what the upstream answers.
type Echo struct {
	Upstream string              `json:"upstream"`
	Method   string              `json:"method"`
	URL      string              `json:"url"`
	Args     map[string][]string `json:"args"`
	Headers  map[string]string   `json:"headers"`
	Body     string              `json:"body"`
}

// Handler answers every request with an Echo naming this upstream.
func Handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		headers := make(map[string]string, len(r.Header))
		for k := range r.Header {
			headers[k] = r.Header.Get(k)
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(Echo{Upstream: name, Method: r.Method, URL: r.URL.String(), Args: r.URL.Query(), Headers: headers, Body: string(body)})
	})
}
