// Package routes holds the data plane's routes: what a route is, how one is
// validated, and the table a proxy matches requests against.
package routes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Prefix is where routes live in the key space: /routes/{name}.
const Prefix = "/routes/"

// MaxNameLen bounds a route's name (the key's last part).
const MaxNameLen = 256

// MaxTimeout bounds each of a route's timeouts: a longer one is more likely
// a typing mistake ("60h" for "60s") than a wish.
const MaxTimeout = 24 * time.Hour

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid route")

// Route sends requests whose path matches URI to Upstream. A URI ending in
// "*" matches every path that starts with what precedes the "*". Timeout,
// when set, overrides the data plane's timeouts for this route, field by
// field.
type Route struct {
	URI      string   `json:"uri"`
	Upstream string   `json:"upstream"`
	Timeout  Timeouts `json:"timeout,omitzero"`
}

// Timeouts bound how long a data plane waits on an upstream. A zero field
// is unset: the data plane's own value applies.
type Timeouts struct {
	// Connect bounds opening a connection to the upstream.
	Connect Duration `json:"connect,omitzero"`
	// ResponseHeader bounds the wait for the response's headers once the
	// request is being sent; while its body is sent, the wait restarts
	// each time the upstream takes more of it.
	ResponseHeader Duration `json:"response_header,omitzero"`
	// Idle ends a response whose body the upstream stops sending: no
	// bytes for this long.
	Idle Duration `json:"idle,omitzero"`
}

// Or returns t with its unset fields taken from d.
func (t Timeouts) Or(d Timeouts) Timeouts {
	if t.Connect == 0 {
		t.Connect = d.Connect
	}
	if t.ResponseHeader == 0 {
		t.ResponseHeader = d.ResponseHeader
	}
	if t.Idle == 0 {
		t.Idle = d.Idle
	}
	return t
}

// Validate checks that each timeout is unset or in (0, MaxTimeout].
func (t Timeouts) Validate() error {
	for _, f := range []struct {
		name string
		d    Duration
	}{{"connect", t.Connect}, {"response_header", t.ResponseHeader}, {"idle", t.Idle}} {
		if f.d < 0 || time.Duration(f.d) > MaxTimeout {
			return fmt.Errorf("%w: timeout.%s %s must be above 0 and at most %s", ErrInvalid, f.name, f.d, MaxTimeout)
		}
	}
	return nil
}

// Duration is a time.Duration written in JSON as a Go duration string
// ("250ms", "1.5s", "2m").
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string. It refuses numbers (whose unit
// would be a guess) and durations that are not positive: to use the data
// plane's value, leave the field out.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration %s: want a string such as \"5s\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: want a string such as \"5s\"", s)
	}
	if v <= 0 {
		return fmt.Errorf("duration %q is not above 0 (leave the field out for the data plane's own)", s)
	}
	*d = Duration(v)
	return nil
}

// Key is the key a route named name is stored at.
func Key(name string) string { return Prefix + name }

// ValidateName checks a route name: non-empty, bounded, valid UTF-8 text
// without control characters (NUL among them), one path segment and
// neither "." nor "..", which clients resolve as paths.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: name is empty", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: name longer than %d bytes", ErrInvalid, MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: name %q is not valid UTF-8", ErrInvalid, name)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: name %q contains a control character", ErrInvalid, name)
	case strings.Contains(name, "/"):
		return fmt.Errorf("%w: name %q contains '/'", ErrInvalid, name)
	case name == "." || name == "..":
		return fmt.Errorf("%w: name %q is a relative path segment", ErrInvalid, name)
	}
	return nil
}

// Decode reads a route from JSON, refusing unknown fields and trailing data,
// and validates it.
func Decode(r io.Reader) (Route, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var rt Route
	if err := dec.Decode(&rt); err != nil {
		return Route{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return Route{}, fmt.Errorf("%w: data after the route object", ErrInvalid)
	}
	return rt, rt.Validate()
}

// Parse decodes a stored route value.
func Parse(value []byte) (Route, error) { return Decode(bytes.NewReader(value)) }

// Validate checks that URI is a clean path, Upstream an absolute http(s) URL
// without credentials or fragment, and the timeouts in range.
//
// Credentials are refused rather than sent: the proxy would not send them
// (it sets the outgoing URL's scheme, host and path only), and a secret in
// the route would be echoed by every read and logged by every data plane.
// A fragment never reaches a server. A query is kept: the proxy adds it to
// every request's own.
func (rt Route) Validate() error {
	if !strings.HasPrefix(rt.URI, "/") {
		return fmt.Errorf("%w: uri %q must start with '/'", ErrInvalid, rt.URI)
	}
	if i := strings.IndexByte(rt.URI, '*'); i >= 0 && i != len(rt.URI)-1 {
		return fmt.Errorf("%w: uri %q: '*' may only end it", ErrInvalid, rt.URI)
	}
	if p := strings.TrimSuffix(rt.URI, "*"); CleanPath(p) != p {
		return fmt.Errorf("%w: uri %q would never match: the proxy matches cleaned paths, such as %q", ErrInvalid, rt.URI, CleanPath(p)+rt.URI[len(p):])
	}
	if err := validateUpstream(rt.Upstream); err != nil {
		return err
	}
	return rt.Timeout.Validate()
}

// CleanPath is path.Clean, except that a trailing slash stays: the form in
// which the proxy matches request paths.
func CleanPath(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

// validateUpstream checks an upstream URL. Its errors never quote a
// password.
func validateUpstream(upstream string) error {
	if upstream == "" {
		return fmt.Errorf("%w: upstream is missing", ErrInvalid)
	}
	u, err := url.Parse(upstream)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL, which may hold a password
		}
		return fmt.Errorf("%w: upstream is not a URL: %v", ErrInvalid, err)
	}
	switch {
	case u.User != nil:
		return fmt.Errorf("%w: upstream %q has credentials (user[:password]@): the proxy does not send them; set them on the upstream's side",
			ErrInvalid, u.Redacted())
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("%w: upstream %q must be an absolute http or https URL", ErrInvalid, upstream)
	case strings.Contains(upstream, "#"):
		return fmt.Errorf("%w: upstream %q has a fragment ('#'), which is never sent", ErrInvalid, upstream)
	}
	return nil
}

// Table matches request paths to routes: an exact URI first, then the
// longest matching prefix. It is immutable; changes make a new one.
type Table struct {
	byName   map[string]Route
	exact    map[string]string // URI -> name
	prefixes []prefix          // longest first
}

// prefix is a route whose URI ends in "*".
type prefix struct {
	prefix string // the URI without its "*"
	name   string
}

// NewTable builds a table from routes by name.
func NewTable(byName map[string]Route) *Table {
	t := &Table{byName: byName, exact: map[string]string{}}
	for name, rt := range byName {
		if p, ok := strings.CutSuffix(rt.URI, "*"); ok {
			t.prefixes = append(t.prefixes, prefix{p, name})
		} else if other, ok := t.exact[rt.URI]; !ok || name < other {
			t.exact[rt.URI] = name // the same URI twice: the first name wins, whatever the map's order
		}
	}
	sort.Slice(t.prefixes, func(i, j int) bool {
		a, b := t.prefixes[i], t.prefixes[j]
		if len(a.prefix) != len(b.prefix) {
			return len(a.prefix) > len(b.prefix)
		}
		if a.prefix != b.prefix {
			return a.prefix < b.prefix
		}
		return a.name < b.name
	})
	return t
}

// Match returns the route for path, and its name.
func (t *Table) Match(path string) (name string, rt Route, ok bool) {
	if name, ok := t.exact[path]; ok {
		return name, t.byName[name], true
	}
	for _, p := range t.prefixes {
		if strings.HasPrefix(path, p.prefix) {
			return p.name, t.byName[p.name], true
		}
	}
	return "", Route{}, false
}

// With returns a table with the route called name set to rt.
func (t *Table) With(name string, rt Route) *Table {
	next := maps.Clone(t.byName)
	if next == nil {
		next = map[string]Route{}
	}
	next[name] = rt
	return NewTable(next)
}

// Without returns a table without the route called name.
func (t *Table) Without(name string) *Table {
	next := maps.Clone(t.byName)
	delete(next, name)
	return NewTable(next)
}

// Len is the number of routes.
func (t *Table) Len() int { return len(t.byName) }

// Get returns the route called name.
func (t *Table) Get(name string) (Route, bool) {
	rt, ok := t.byName[name]
	return rt, ok
}
