package main

import (
	"slices"
	"testing"
)

func TestSelectSystems(t *testing.T) {
	names := func(sel map[string]bool) []string {
		var out []string
		for _, s := range systemOrder {
			if sel[s] {
				out = append(out, s)
			}
		}
		return out
	}
	for _, tc := range []struct {
		list  string
		quick bool
		want  []string
	}{
		{"", false, systemOrder},
		{"", true, slices.DeleteFunc(slices.Clone(systemOrder), func(s string) bool { return s == "kine" })},
		{"kine, etcd", true, []string{"etcd", "kine"}},
		{"walwatch_etcd", false, []string{"walwatch_etcd"}},
	} {
		sel, err := selectSystems(tc.list, tc.quick)
		if err != nil {
			t.Fatalf("selectSystems(%q, %v): %v", tc.list, tc.quick, err)
		}
		if got := names(sel); !slices.Equal(got, tc.want) {
			t.Errorf("selectSystems(%q, %v) = %v, want %v", tc.list, tc.quick, got, tc.want)
		}
	}
	if _, err := selectSystems("etcd,nope", false); err == nil {
		t.Error("an unknown system was accepted")
	}
}

// kine 0.17.5 holds two connections per write; a pool no larger than the
// requests in flight deadlocks (see kinePoolSize).
func TestKinePoolExceedsClients(t *testing.T) {
	if kinePoolSize <= maxClients {
		t.Errorf("kinePoolSize %d must exceed maxClients %d", kinePoolSize, maxClients)
	}
}
