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
