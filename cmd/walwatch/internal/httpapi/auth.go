package httpapi

import (
	"bufio"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Tokens are the bearer tokens the API accepts, each read-only or
// read-write.
type Tokens struct {
	tokens []token
}

type token struct {
	secret []byte
	write  bool
}

// ParseTokens reads a token file: one token per line, followed by "ro" or
// "rw"; blank lines and lines starting with # are skipped.
//
//	3f1c...9a rw
//	77d0...1e ro
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 || (fields[1] != "ro" && fields[1] != "rw") {
			return nil, fmt.Errorf("token file line %d: want \"TOKEN ro\" or \"TOKEN rw\"", n)
		}
		if len(fields[0]) < 16 {
			return nil, fmt.Errorf("token file line %d: token shorter than 16 characters", n)
		}
		t.tokens = append(t.tokens, token{secret: []byte(fields[0]), write: fields[1] == "rw"})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read token file: %w", err)
	}
	if len(t.tokens) == 0 {
		return nil, fmt.Errorf("token file has no tokens")
	}
	return t, nil
}

// allows reports whether a request bearing secret may read (or write).
func (t *Tokens) allows(secret string, write bool) (known, allowed bool) {
	for _, tk := range t.tokens {
		if subtle.ConstantTimeCompare(tk.secret, []byte(secret)) == 1 {
			return true, tk.write || !write
		}
	}
	return false, false
}

// auth checks the bearer token when tokens are configured: write says
// whether the endpoint needs a read-write token.
func (s *Server) auth(write bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if s.cfg.Tokens == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			known, allowed := s.cfg.Tokens.allows(strings.TrimSpace(secret), write)
			switch {
			case !ok || !known:
				w.Header().Set("WWW-Authenticate", `Bearer realm="walwatch"`)
				writeJSON(w, http.StatusUnauthorized, apiError{Error: "a valid bearer token is required", Code: "unauthenticated"})
			case !allowed:
				writeJSON(w, http.StatusForbidden, apiError{Error: "this token is read-only", Code: "permission_denied"})
			default:
				next.ServeHTTP(w, r)
			}
		})
	}
}
