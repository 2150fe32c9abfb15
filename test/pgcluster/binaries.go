package pgcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNoServerBinaries means no directory holding initdb, postgres and pg_ctl
// was found. Errors wrapping it carry installation advice.
var ErrNoServerBinaries = errors.New("PostgreSQL server binaries (initdb, postgres, pg_ctl) not found")

// installHint is appended to ErrNoServerBinaries so that a failing test or
// demo tells the reader what to do, not just what went wrong.
const installHint = "install them with `apt-get install postgresql` on Debian/Ubuntu, " +
	"or put the directory holding initdb and postgres on PATH, " +
	"or pass --postgres to use an existing server"

// debianBinGlob is where Debian/Ubuntu's postgresql packages put the server
// binaries; they are deliberately not on PATH there.
const debianBinGlob = "/usr/lib/postgresql/*/bin"

var requiredBinaries = []string{"initdb", "postgres", "pg_ctl"}

// FindBinaries returns a directory holding initdb, postgres and pg_ctl.
// It looks at initdb on $PATH (following symlinks, since Debian-style
// wrappers or hand-made links point elsewhere), then `pg_config --bindir`,
// then /usr/lib/postgresql/*/bin from the highest version down.
func FindBinaries() (string, error) {
	return findBinaries(debianBinGlob)
}

func findBinaries(glob string) (string, error) {
	var tried []string

	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dir := filepath.Dir(real)
			if hasBinaries(dir) {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	}

	if dir, err := pgConfigBindir(); err == nil {
		if hasBinaries(dir) {
			return dir, nil
		}
		tried = append(tried, dir)
	}

	dirs, _ := filepath.Glob(glob) // only fails on a malformed pattern
	sortByVersionDesc(dirs)
	for _, dir := range dirs {
		if hasBinaries(dir) {
			return dir, nil
		}
		tried = append(tried, dir)
	}

	where := "PATH, pg_config --bindir, " + glob
	if len(tried) > 0 {
		where += " (incomplete: " + strings.Join(tried, ", ") + ")"
	}
	return "", fmt.Errorf("searched %s: %w; %s", where, ErrNoServerBinaries, installHint)
}

func hasBinaries(dir string) bool {
	for _, name := range requiredBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

func pgConfigBindir() (string, error) {
	p, err := exec.LookPath("pg_config")
	if err != nil {
		return "", err
	}
	// pg_config only prints; the timeout guards against a broken wrapper.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--bindir").Output()
	if err != nil {
		return "", fmt.Errorf("running %s --bindir: %w", p, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// sortByVersionDesc orders /usr/lib/postgresql/<version>/bin paths so the
// newest major version comes first; "9.6" sorts below "10".
func sortByVersionDesc(dirs []string) {
	version := func(dir string) float64 {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		if err != nil {
			return -1
		}
		return v
	}
	slices.SortStableFunc(dirs, func(a, b string) int { return cmp.Compare(version(b), version(a)) })
}
