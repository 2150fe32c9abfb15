package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/walwatch/walwatch/sql"
	"github.com/walwatch/walwatch/test/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// run runs the CLI in-process with args and returns stdout and the error.
func run(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCommand(&out, &errOut)
	cmd.SetArgs(append([]string{"--postgres", url}, args...))
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

func TestCLI(t *testing.T) {
	url := pgtest.NewDatabase(t)
	steps := []struct {
		args    []string
		want    string // JSON output, or a substring of the error
		wantErr bool
	}{
		{[]string{"migrate", "-o", "json"}, fmt.Sprintf(`{"from_version":0,"version":%d}`, sql.Latest()), false},
		{[]string{"migrate", "-o", "json"}, fmt.Sprintf(`{"from_version":%[1]d,"version":%[1]d}`, sql.Latest()), false},
		{[]string{"put", "/routes/foo", `{"uri":"/get"}`, "-o", "json"}, `{"revision":2}`, false},
		{[]string{"-o", "json", "put", "/routes/foo", "v2"}, `{"revision":3}`, false},
		{[]string{"put", "/routes2/x", "x", "-o", "json"}, `{"revision":4}`, false},
		// Flags after arguments, as with etcdctl.
		{[]string{"get", "/routes/foo", "--rev", "2", "-o", "json"},
			`{"revision":2,"kvs":[{"key":"/routes/foo","value":"{\"uri\":\"/get\"}","create_revision":2,"mod_revision":2,"version":1}],"more":false}`, false},
		{[]string{"get", "--prefix", "/routes/", "-o", "json"},
			`{"revision":4,"kvs":[{"key":"/routes/foo","value":"v2","create_revision":2,"mod_revision":3,"version":2}],"more":false}`, false},
		{[]string{"get", "/routes", "--prefix", "--limit", "1", "-o", "json"},
			`{"revision":4,"kvs":[{"key":"/routes/foo","value":"v2","create_revision":2,"mod_revision":3,"version":2}],"more":true}`, false},
		{[]string{"del", "/routes/", "--prefix", "-o", "json"}, `{"deleted":1,"revision":5}`, false},
		{[]string{"del", "/routes/", "--prefix", "-o", "json"}, `{"deleted":0,"revision":5}`, false},
		{[]string{"compact", "--revision", "3", "-o", "json"}, `{"compact_revision":3,"removed":1}`, false},
		{[]string{"compact", "--older-than", "72h", "-o", "json"}, `{"compact_revision":3,"removed":0}`, false},
		{[]string{"get", "/routes/foo", "--rev", "2"}, "compacted revision 3", true},
		{[]string{"compact", "--keep-latest", "-o", "json"}, `{"compact_revision":5,"removed":1}`, false},
		{[]string{"get", "/routes/foo", "--rev", "9"}, "future revision", true},
		{[]string{"put", "", "x"}, "key is empty", true},
		{[]string{"compact"}, "exactly one of", true},
		{[]string{"get", "/a", "-o", "yaml"}, "unknown output format", true},
	}
	for _, st := range steps {
		out, err := run(t, url, st.args...)
		if st.wantErr {
			if err == nil || !strings.Contains(err.Error(), st.want) {
				t.Fatalf("walwatch %s: error %v, want one containing %q", strings.Join(st.args, " "), err, st.want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("walwatch %s: %v", strings.Join(st.args, " "), err)
		}
		if !jsonEqual(t, out, st.want) {
			t.Fatalf("walwatch %s printed %s, want %s", strings.Join(st.args, " "), out, st.want)
		}
	}
	// The default output is a table a person reads.
	out, err := run(t, url, "get", "/routes2/x")
	if err != nil || !strings.Contains(out, "KEY") || !strings.Contains(out, `"/routes2/x"`) {
		t.Fatalf("table output:\n%s (err %v)", out, err)
	}
}

func jsonEqual(t *testing.T, got, want string) bool {
	t.Helper()
	var a, b any
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatalf("output is not JSON: %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// pflag takes text in backquotes in a flag's usage as its value's name, so
// `walwatch cp` in a usage made --help show "--cp walwatch cp".
func TestFlagUsageHasNoBackquotes(t *testing.T) {
	var visit func(c *cobra.Command)
	visit = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if strings.Contains(f.Usage, "`") {
					t.Errorf("%s --%s: usage %q has a backquote", c.CommandPath(), f.Name, f.Usage)
				}
			})
		}
		for _, sub := range c.Commands() {
			visit(sub)
		}
	}
	visit(newRootCommand(&bytes.Buffer{}, &bytes.Buffer{}))
}

// The shipped binary carries no test code: the private-PostgreSQL launcher
// behind demo is test/pgcluster, and the helpers tests build on it live in
// test/pgtest.
func TestBinaryDoesNotLinkTesting(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps .: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "testing" || strings.HasPrefix(pkg, "testing/") {
			t.Errorf("walwatch links %s", pkg)
		}
	}
}
