package pgtest

import (
	"net"
	"testing"
)

// FreeAddr returns a loopback address whose port was free a moment ago.
// A server started on it may find it taken in between: retry then.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// RefusedURL returns a connection string for a loopback port nothing listens
// on (nothing did a moment ago), so connecting is refused at once: a
// PostgreSQL that is down.
func RefusedURL(t testing.TB) string {
	t.Helper()
	return "postgres://postgres@" + FreeAddr(t) + "/walwatch?sslmode=disable&connect_timeout=5"
}
