package main

import (
	"strings"
	"testing"
)

func TestAPIFloorTable(t *testing.T) {
	got := map[string]map[string][]float64{
		"thin": {"get_1_per_s": {1000, 3000, 2000}, "get_1_p50_us": {400, 500}},
		"etcd": {"get_1_per_s": {4000, 4000, 4000}, "get_1_p50_us": {300, 300}, "put_1_p50_us": {800}},
	}
	md := apiFloorTable([]string{"thin", "etcd"}, got)
	rows := map[string]string{}
	for line := range strings.Lines(md) {
		if name, _, ok := strings.Cut(strings.TrimPrefix(line, "| "), " |"); ok && strings.HasPrefix(line, "| ") {
			rows[name] = strings.TrimSpace(line)
		}
	}
	for name, want := range map[string]string{
		// Medians of the rounds, the ratio to etcd's, a dash for what was
		// not measured.
		"thin": "| thin | 2000 (0.50×) | 450 µs (1.50×) | — | — | — | — | — |",
		"etcd": "| etcd | 4000 | 300 µs | 800 µs | — | — | — | — |",
	} {
		if rows[name] != want {
			t.Errorf("row %s = %q, want %q", name, rows[name], want)
		}
	}
	if !strings.Contains(md, "- thin get_1_per_s: 1000, 3000, 2000\n") {
		t.Errorf("the rounds of thin's gets are missing:\n%s", md)
	}
}
