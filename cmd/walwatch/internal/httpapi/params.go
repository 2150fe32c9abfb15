package httpapi

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// params is a request's query string, read strictly: every parameter is one
// the endpoint takes, given once. A typo (?revision=5, ?prefx=true) or a
// parameter given twice (?rev=3&rev=abc) is refused rather than guessed at,
// as unknown fields of a JSON body are.
type params url.Values

// queryParams parses r's query string, which may hold only the parameters
// in allowed, each at most once.
func queryParams(r *http.Request, allowed ...string) (params, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: query string: %v", errBadRequest, err)
	}
	for _, name := range slices.Sorted(maps.Keys(q)) {
		switch {
		case !slices.Contains(allowed, name):
			return nil, fmt.Errorf("%w: unknown parameter %q (%s)", errBadRequest, name, takes(allowed))
		case len(q[name]) > 1:
			return nil, fmt.Errorf("%w: parameter %q is given %d times; give it once", errBadRequest, name, len(q[name]))
		}
	}
	return params(q), nil
}

// takes says which parameters an endpoint takes.
func takes(allowed []string) string {
	if len(allowed) == 0 {
		return "this endpoint takes none"
	}
	return "this endpoint takes " + strings.Join(allowed, ", ")
}

// get returns the parameter's value and whether it was given.
func (p params) get(name string) (string, bool) {
	v, ok := p[name]
	if !ok {
		return "", false
	}
	return v[0], true
}

// revision reads ?rev=N: 0 (the latest, or now) when absent.
func (p params) revision() (int64, error) {
	v, ok := p.get("rev")
	if !ok {
		return 0, nil
	}
	rev, err := decimal(v)
	switch {
	case errors.Is(err, errOutOfRange):
		return 0, fmt.Errorf("%w: rev=%s is out of range", errBadRequest, v)
	case err != nil:
		return 0, fmt.Errorf("%w: rev=%q must be a revision (a non-negative integer)", errBadRequest, v)
	}
	return rev, nil
}

// limit reads ?limit=N: 0 (no limit) when absent.
func (p params) limit() (int64, error) {
	v, ok := p.get("limit")
	if !ok {
		return 0, nil
	}
	n, err := decimal(v)
	switch {
	case errors.Is(err, errOutOfRange):
		return 0, fmt.Errorf("%w: limit=%s is out of range", errBadRequest, v)
	case err != nil:
		return 0, fmt.Errorf("%w: limit=%q must be a non-negative integer", errBadRequest, v)
	}
	return n, nil
}

// boolean reads ?name=true or ?name=false: false when absent.
func (p params) boolean(name string) (bool, error) {
	v, ok := p.get(name)
	switch {
	case !ok || v == "false":
		return false, nil
	case v == "true":
		return true, nil
	}
	return false, fmt.Errorf("%w: %s=%q must be true or false", errBadRequest, name, v)
}

// lastEventID reads the Last-Event-ID a reconnecting watch sends: the
// revision it has, so it resumes at the next one. ok is false when there is
// none.
func lastEventID(r *http.Request) (next int64, ok bool, err error) {
	ids := r.Header.Values("Last-Event-ID")
	switch len(ids) {
	case 0:
		return 0, false, nil
	case 1:
	default:
		return 0, false, fmt.Errorf("%w: Last-Event-ID is given %d times; give it once", errBadRequest, len(ids))
	}
	id := ids[0]
	if id == "" {
		return 0, false, nil // the event stream spec's reset: no id
	}
	last, err := decimal(id)
	switch {
	case errors.Is(err, errOutOfRange), err == nil && last == maxRevision:
		// Even the largest revision has no next one to resume at.
		return 0, false, fmt.Errorf("%w: Last-Event-ID %s is out of range", errBadRequest, id)
	case err != nil:
		return 0, false, fmt.Errorf("%w: Last-Event-ID %q is not a revision", errBadRequest, id)
	}
	return last + 1, true, nil
}

// maxRevision is the largest revision there can be.
const maxRevision = 1<<63 - 1

var (
	errNotDecimal = errors.New("not a non-negative decimal integer")
	errOutOfRange = errors.New("out of range")
)

// decimal parses s as a plain non-negative decimal integer: ASCII digits
// only, no sign, space, underscore or base prefix, at most maxRevision.
func decimal(s string) (int64, error) {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < '0' || r > '9' }) {
		return 0, errNotDecimal
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errOutOfRange // only digits: the one way left to fail
	}
	return n, nil
}
