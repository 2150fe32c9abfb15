package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// account is the unprivileged user that initdb and postgres run as when we
// are root (both refuse to run as root). A nil *account means "run as
// ourselves" and makes every method a no-op.
type account struct {
	name string
	uid  int
	gid  int
}

// serverAccount picks the user to run the server as: nil unless we are root,
// then "postgres" if it exists (Debian's package creates it), else "nobody".
func serverAccount() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		u, err = user.Lookup("nobody")
		if err != nil {
			return nil, fmt.Errorf("running as root, initdb and postgres need an unprivileged user, but neither postgres nor nobody exists: %w", err)
		}
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("parsing uid %q of user %s: %w", u.Uid, u.Username, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("parsing gid %q of user %s: %w", u.Gid, u.Username, err)
	}
	return &account{name: u.Username, uid: uid, gid: gid}, nil
}

// credential returns the credentials to start a child process with; nil keeps ours.
func (a *account) credential() *syscall.Credential {
	if a == nil {
		return nil
	}
	// Groups left empty: the child drops root's supplementary groups.
	return &syscall.Credential{Uid: uint32(a.uid), Gid: uint32(a.gid)}
}

// chown hands path to the server user so it can write there.
func (a *account) chown(path string) error {
	if a == nil {
		return nil
	}
	if err := os.Chown(path, a.uid, a.gid); err != nil {
		return fmt.Errorf("handing %s to user %s: %w", path, a.name, err)
	}
	return nil
}

// checkReachable reports, before initdb or postgres fail with a bare
// "Permission denied", when the server user cannot traverse a directory
// above path. It matters as root: t.TempDir() and $HOME are mode 0700.
func (a *account) checkReachable(path string) error {
	if a == nil {
		return nil
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Start creates missing parents with mode 0755.
		case err != nil:
			return fmt.Errorf("checking access to %s: %w", dir, err)
		case !canTraverse(fi, a.uid, a.gid):
			return fmt.Errorf("server user %s (uid %d) cannot reach %s: %s has mode %04o; "+
				"use a directory it can traverse (e.g. under %s) or chmod o+x %s",
				a.name, a.uid, path, dir, uint32(fi.Mode().Perm()), os.TempDir(), dir)
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// canTraverse applies the owner/group/other execute bits for uid and its
// primary gid (the child runs without supplementary groups).
func canTraverse(fi os.FileInfo, uid, gid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // not a Unix file system; let the server report problems
	}
	need := os.FileMode(0o001)
	switch {
	case int(st.Uid) == uid:
		need = 0o100
	case int(st.Gid) == gid:
		need = 0o010
	}
	return fi.Mode().Perm()&need != 0
}
