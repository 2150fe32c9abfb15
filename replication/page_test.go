package replication

import (
	"fmt"
	"testing"

	"github.com/walwatch/walwatch/store"
)

// TestTableReadFilter: the first table read takes every row, fillers too;
// a catch-up takes its range's rows up to its revision and no filler. Each
// keeps one statement text (pgx caches the description by text).
func TestTableReadFilter(t *testing.T) {
	tests := []struct {
		name  string
		read  tableRead
		where string
		args  string
	}{
		{"first read", tableRead{after: 7},
			"revision > $1", "[7]"},
		{"catch-up of a prefix", tableRead{keys: new(store.Prefix([]byte("/a/"))), after: 7, upto: 9},
			"key >= $1 and key < $2 and key <> '' and revision > $3 and revision <= $4", `[/a/ /a0 7 9]`},
		{"catch-up of a key", tableRead{keys: new(store.Key([]byte("/a"))), after: 7, upto: 9},
			"key >= $1 and key < $2 and key <> '' and revision > $3 and revision <= $4", "[/a /a\x00 7 9]"},
		{"catch-up of everything from a key on", tableRead{keys: &store.KeyRange{Key: []byte("/"), End: []byte{0}}, after: 7, upto: 9},
			"key >= $1 and key <> '' and revision > $2 and revision <= $3", "[/ 7 9]"},
	}
	for _, tt := range tests {
		where, args := tt.read.filter()
		if where != tt.where {
			t.Errorf("%s: where %q, want %q", tt.name, where, tt.where)
		}
		var shown []string
		for _, a := range args {
			if b, ok := a.([]byte); ok {
				a = string(b)
			}
			shown = append(shown, fmt.Sprint(a))
		}
		if got := fmt.Sprint(shown); got != tt.args {
			t.Errorf("%s: args %q, want %q", tt.name, got, tt.args)
		}
	}
}
