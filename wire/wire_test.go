package wire

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/walwatch/walwatch/store"
)

func TestTextRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		text, b6 string
	}{
		{"ascii", []byte("/routes/foo"), "/routes/foo", ""},
		{"utf-8", []byte("caf\u00e9"), "caf\u00e9", ""},
		{"nul is text", []byte("a\x00b"), "a\x00b", ""},
		{"empty", nil, "", ""},
		{"invalid utf-8", []byte("bad\xff\xfe"), "", "YmFk//4="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text, b64 := Text(tt.in)
			if text != tt.text || b64 != tt.b6 {
				t.Fatalf("Text(%q) = %q, %q; want %q, %q", tt.in, text, b64, tt.text, tt.b6)
			}
			back, err := Bytes(text, b64)
			if err != nil || !bytes.Equal(back, tt.in) {
				t.Fatalf("Bytes(%q, %q) = %q, %v; want %q", text, b64, back, err, tt.in)
			}
		})
	}
}

func TestBytesRefuses(t *testing.T) {
	for _, tt := range []struct{ text, b64 string }{{"x", "eA=="}, {"", "not base64!"}} {
		if b, err := Bytes(tt.text, tt.b64); err == nil {
			t.Errorf("Bytes(%q, %q) = %q, want an error", tt.text, tt.b64, b)
		}
	}
}

func TestKVJSON(t *testing.T) {
	got, err := json.Marshal(NewKV(store.KeyValue{Key: []byte("/k\xff"), Value: []byte("v"), CreateRevision: 2, ModRevision: 3, Version: 2}))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"key":"","key_base64":"L2v/","value":"v","create_revision":2,"mod_revision":3,"version":2}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}
