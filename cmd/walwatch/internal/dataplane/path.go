package dataplane

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// errBadPath is wrapped by every reason cleanPath refuses a path; the proxy
// answers those 400.
var errBadPath = errors.New("bad path")

// cleanPath returns u's path with its dot segments resolved and repeated
// slashes merged, as path.Clean does, except that a trailing slash stays
// (and a trailing "." or ".." segment leaves one, as RFC 3986's
// remove_dot_segments does): both the decoded path, which routes are
// matched on, and its escaped form, which is sent on. Kept segments keep
// the client's own percent-encoding.
//
// Segments are compared decoded, so "%2e%2e" is "..". An encoded slash
// (%2F) is refused rather than guessed at: decoded it would be a separator
// the route was matched on but the upstream may not see, kept it would hide
// a dot segment from the match that the upstream may resolve. An encoded
// NUL is refused too. So is a path that does not start with '/' (the
// asterisk form "*"; Go's server answers "OPTIONS *" itself) and one whose
// ".." would climb above the root. An empty path (absolute form
// "GET http://host") is "/".
func cleanPath(u *url.URL) (path, rawPath string, err error) {
	escaped := u.EscapedPath()
	if escaped == "" {
		return "/", "/", nil
	}
	if escaped[0] != '/' {
		return "", "", fmt.Errorf("%w: it does not start with '/'", errBadPath)
	}
	if !strings.Contains(escaped, "//") && !strings.Contains(escaped, "/.") && !strings.Contains(escaped, "%") {
		return escaped, escaped, nil // clean already, and nothing encoded: the common case
	}
	segs := strings.Split(escaped[1:], "/")
	raw := make([]string, 0, len(segs))
	dec := make([]string, 0, len(segs))
	var d string
	for _, seg := range segs {
		if d, err = url.PathUnescape(seg); err != nil {
			return "", "", fmt.Errorf("%w: %v", errBadPath, err)
		}
		if strings.Contains(d, "/") {
			return "", "", fmt.Errorf("%w: it has an encoded '/' (%%2F)", errBadPath)
		}
		if strings.Contains(d, "\x00") {
			return "", "", fmt.Errorf("%w: it has an encoded NUL (%%00)", errBadPath)
		}
		switch d {
		case "", ".":
		case "..":
			if len(dec) == 0 {
				return "", "", fmt.Errorf("%w: its '..' climbs above the root", errBadPath)
			}
			raw, dec = raw[:len(raw)-1], dec[:len(dec)-1]
		default:
			raw, dec = append(raw, seg), append(dec, d)
		}
	}
	path, rawPath = "/"+strings.Join(dec, "/"), "/"+strings.Join(raw, "/")
	if (d == "" || d == "." || d == "..") && len(dec) > 0 { // d is the last segment
		path, rawPath = path+"/", rawPath+"/"
	}
	return path, rawPath, nil
}
