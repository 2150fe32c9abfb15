package store_test

import (
	"bytes"
	"testing"

	"github.com/walwatch/walwatch/store"
)

func TestKeyRange(t *testing.T) {
	tests := []struct {
		name   string
		r      store.KeyRange
		in     []string
		out    []string
		upper  []byte
		isOpen bool
	}{
		{"key", store.Key([]byte("/a")), []string{"/a"}, []string{"/", "/a\x00", "/b"}, []byte("/a\x00"), false},
		{"prefix", store.Prefix([]byte("/a/")), []string{"/a/", "/a/x", "/a/\xff"}, []string{"/a", "/a0", "/b/"}, []byte("/a0"), false},
		{"prefix of 0xff", store.Prefix([]byte("\xff\xff")), []string{"\xff\xff", "\xff\xff\x00"}, []string{"\xff"}, nil, true},
		{"from key", store.FromKey([]byte("/m")), []string{"/m", "/z", "\xff"}, []string{"/a", "/"}, nil, true},
		{"range", store.KeyRange{Key: []byte("/a"), End: []byte("/c")}, []string{"/a", "/b", "/bz"}, []string{"/c", "/0"}, []byte("/c"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range tt.in {
				if !tt.r.Contains([]byte(k)) {
					t.Errorf("%q does not contain %q", tt.r, k)
				}
			}
			for _, k := range tt.out {
				if tt.r.Contains([]byte(k)) {
					t.Errorf("%q contains %q", tt.r, k)
				}
			}
			if got := tt.r.Upper(); !bytes.Equal(got, tt.upper) || (got == nil) != (tt.upper == nil) {
				t.Errorf("Upper() = %q, want %q", got, tt.upper)
			}
			if got := tt.r.IsOpenEnded(); got != tt.isOpen {
				t.Errorf("IsOpenEnded() = %v, want %v", got, tt.isOpen)
			}
		})
	}
}

func TestOwnKeyValue(t *testing.T) {
	tests := []struct {
		name       string
		key, value []byte
	}{
		{"both", []byte("/a"), []byte("v")},
		{"empty value", []byte("/a"), []byte{}},
		{"no value", []byte("/a"), nil},
		{"no key", nil, []byte("v")},
		{"neither", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The driver's buffer: one slice holding both, as a message does.
			lent := append(append([]byte{}, tt.key...), tt.value...)
			var key, value []byte
			if tt.key != nil {
				key = lent[:len(tt.key)]
			}
			if tt.value != nil {
				value = lent[len(tt.key):]
			}
			k, v := store.OwnKeyValue(key, value)
			if !bytes.Equal(k, tt.key) || (k == nil) != (tt.key == nil) ||
				!bytes.Equal(v, tt.value) || (v == nil) != (tt.value == nil) {
				t.Fatalf("OwnKeyValue(%q, %q) = %q, %q", tt.key, tt.value, k, v)
			}
			for i := range lent {
				lent[i] = 'x' // the driver reuses its buffer
			}
			if string(k) != string(tt.key) || string(v) != string(tt.value) {
				t.Fatalf("after the driver's buffer changed: %q, %q; want %q, %q", k, v, tt.key, tt.value)
			}
			if grown := append(k, 'y'); len(v) > 0 && v[0] == 'y' {
				t.Fatalf("appending to the key (%q) wrote over the value: %q", grown, v)
			}
		})
	}
}
