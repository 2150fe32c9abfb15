package pgtest

import (
	"strings"
	"testing"
)

func TestDatabaseName(t *testing.T) {
	for _, tc := range []struct {
		test string
		seq  int64
		want string
	}{
		{"TestSimple", 1, "testsimple_1"},
		{"TestX/sub case #2", 7, "testx_sub_case__2_7"},
		{"Test" + strings.Repeat("Long", 30), 12345, "test" + strings.Repeat("long", 9) + "_12345"},
		{"TestÜmlaut", 3, "test_mlaut_3"},
	} {
		got := databaseName(tc.test, tc.seq)
		if got != tc.want {
			t.Errorf("databaseName(%q, %d) = %q, want %q", tc.test, tc.seq, got, tc.want)
		}
		if len(got) > 63 {
			t.Errorf("databaseName(%q, %d) = %q is longer than 63 bytes", tc.test, tc.seq, got)
		}
	}
}
