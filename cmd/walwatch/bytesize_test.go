package main

import "testing"

func TestByteSize(t *testing.T) {
	good := map[string]int{
		"1": 1, "67108864": 64 << 20, "64MiB": 64 << 20, "64mib": 64 << 20, "512 KiB": 512 << 10,
		"2GiB": 2 << 30, "100B": 100, "1536KiB": 1536 << 10,
	}
	for in, want := range good {
		var b byteSize
		if err := b.Set(in); err != nil || int(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, int(b), err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "64MB", "1.5MiB", "MiB", "64 MiBs", "99999999999GiB"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, int(b))
		}
	}
	for n, want := range map[int]string{64 << 20: "64MiB", 1536 << 10: "1536KiB", 1 << 30: "1GiB", 1000: "1000B"} {
		if got := (*byteSize)(&n).String(); got != want {
			t.Errorf("String(%d) = %q, want %q", n, got, want)
		}
	}
}
