package pgcluster

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestFindBinariesMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // hides initdb and pg_config
	_, err := findBinaries(filepath.Join(t.TempDir(), "*", "bin"))
	if !errors.Is(err, ErrNoServerBinaries) {
		t.Fatalf("err = %v, want ErrNoServerBinaries", err)
	}
	for _, hint := range []string{"apt-get install postgresql", "PATH", "--postgres"} {
		if !strings.Contains(err.Error(), hint) {
			t.Errorf("error lacks %q: %v", hint, err)
		}
	}
}

func TestSortByVersionDesc(t *testing.T) {
	dirs := []string{
		"/usr/lib/postgresql/9.6/bin",
		"/usr/lib/postgresql/15/bin",
		"/usr/lib/postgresql/weird/bin",
		"/usr/lib/postgresql/17/bin",
		"/usr/lib/postgresql/10/bin",
	}
	sortByVersionDesc(dirs)
	want := []string{
		"/usr/lib/postgresql/17/bin",
		"/usr/lib/postgresql/15/bin",
		"/usr/lib/postgresql/10/bin",
		"/usr/lib/postgresql/9.6/bin",
		"/usr/lib/postgresql/weird/bin",
	}
	if !slices.Equal(dirs, want) {
		t.Errorf("got %v, want %v", dirs, want)
	}
}

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
