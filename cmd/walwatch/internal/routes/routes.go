// Package routes holds the data plane's routes: what a route is, how one is
// validated, and the table a proxy matches requests against.
package routes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
)

// Prefix is where routes live in the key space: /routes/{name}.
const Prefix = "/routes/"

// MaxNameLen bounds a route's name (the key's last part).
const MaxNameLen = 256

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid route")

// Route sends requests whose path matches URI to Upstream. A URI ending in
// "*" matches every path that starts with what precedes the "*".
type Route struct {
	URI      string `json:"uri"`
	Upstream string `json:"upstream"`
}

// Key is the key a route named name is stored at.
func Key(name string) string { return Prefix + name }

// ValidateName checks a route name: non-empty, bounded, one path segment.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: name is empty", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: name longer than %d bytes", ErrInvalid, MaxNameLen)
	case strings.Contains(name, "/"):
		return fmt.Errorf("%w: name %q contains '/'", ErrInvalid, name)
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

// Validate checks that URI is a path and Upstream an absolute http(s) URL.
func (rt Route) Validate() error {
	if !strings.HasPrefix(rt.URI, "/") {
		return fmt.Errorf("%w: uri %q must start with '/'", ErrInvalid, rt.URI)
	}
	if i := strings.IndexByte(rt.URI, '*'); i >= 0 && i != len(rt.URI)-1 {
		return fmt.Errorf("%w: uri %q: '*' may only end it", ErrInvalid, rt.URI)
	}
	if rt.Upstream == "" {
		return fmt.Errorf("%w: upstream is missing", ErrInvalid)
	}
	u, err := url.Parse(rt.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: upstream %q must be an absolute http or https URL", ErrInvalid, rt.Upstream)
	}
	return nil
}

// Table matches request paths to routes: an exact URI first, then the
// longest matching prefix. It is immutable; changes make a new one.
type Table struct {
	byName   map[string]Route
	exact    map[string]Route
	prefixes []Route // longest prefix first
}

// NewTable builds a table from routes by name.
func NewTable(byName map[string]Route) *Table {
	t := &Table{byName: byName, exact: map[string]Route{}}
	for _, rt := range byName {
		if p, ok := strings.CutSuffix(rt.URI, "*"); ok {
			t.prefixes = append(t.prefixes, Route{URI: p, Upstream: rt.Upstream})
		} else {
			t.exact[rt.URI] = rt
		}
	}
	sort.Slice(t.prefixes, func(i, j int) bool {
		if len(t.prefixes[i].URI) != len(t.prefixes[j].URI) {
			return len(t.prefixes[i].URI) > len(t.prefixes[j].URI)
		}
		return t.prefixes[i].URI < t.prefixes[j].URI
	})
	return t
}

// Match returns the route for path.
func (t *Table) Match(path string) (Route, bool) {
	if rt, ok := t.exact[path]; ok {
		return rt, true
	}
	for _, rt := range t.prefixes {
		if strings.HasPrefix(path, rt.URI) {
			return rt, true
		}
	}
	return Route{}, false
}

// With returns a table with name set to rt (or removed, when del).
func (t *Table) With(name string, rt Route, del bool) *Table {
	next := make(map[string]Route, len(t.byName)+1)
	for k, v := range t.byName {
		next[k] = v
	}
	if del {
		delete(next, name)
	} else {
		next[name] = rt
	}
	return NewTable(next)
}

// Len is the number of routes.
func (t *Table) Len() int { return len(t.byName) }

// Get returns the route called name.
func (t *Table) Get(name string) (Route, bool) {
	rt, ok := t.byName[name]
	return rt, ok
}
