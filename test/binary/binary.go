// Package binary builds the walwatch binary for the tests that run it as a
// user would (e2e, chaos, soak).
package binary

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build compiles ./cmd/walwatch from the module root into dir and returns
// the binary's path.
func Build(dir string) (string, error) {
	gocmd, err := exec.LookPath("go")
	if err != nil && os.Getenv("GOROOT") != "" {
		gocmd, err = filepath.Join(os.Getenv("GOROOT"), "bin", "go"), nil
	}
	if err != nil {
		return "", fmt.Errorf("no go command to build with: %w", err)
	}
	out, err := exec.Command(gocmd, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a module")
	}
	bin := filepath.Join(dir, "walwatch")
	cmd := exec.Command(gocmd, "build", "-o", bin, "./cmd/walwatch")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -o %s ./cmd/walwatch (in %s): %w\n%s", bin, cmd.Dir, err, out)
	}
	return bin, nil
}

// Main is a test binary's main for tests that run walwatch: it builds the
// binary into a temporary directory, sets *path to it, runs run (the
// package's tests) and removes the directory, and returns the exit code.
// name says whose tests in messages.
func Main(name string, path *string, run func() int) int {
	dir, err := os.MkdirTemp("", "walwatch-"+name+"-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*path, err = Build(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: building the walwatch binary failed:\n%v\n", name, err)
		return 1
	}
	return run()
}
