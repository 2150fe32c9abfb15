// Package wire is how walwatch's control plane puts keys, values and events
// on the wire, for the control plane, its clients (the data plane, tests,
// the benchmark) and the CLI's -o json alike: their JSON shapes, and the
// watch stream's Server-Sent Events, written and read.
//
// Keys and values are bytes, as in etcd. Bytes that are UTF-8 text travel as
// a JSON string in their own field (key, value); bytes that are not travel
// base64-encoded, as etcd's JSON gateway sends every key, in a field beside
// it (key_base64, value_base64) while the text field stays empty. So text
// stays readable and no byte is ever lost or replaced.
package wire

import (
	"encoding/base64"
	"fmt"
	"unicode/utf8"

	"github.com/walwatch/walwatch/store"
)

// Text splits b into its JSON fields: text when b is UTF-8, else b64.
func Text(b []byte) (text, b64 string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return "", base64.StdEncoding.EncodeToString(b)
}

// Bytes joins a text field and its base64 field back into bytes.
func Bytes(text, b64 string) ([]byte, error) {
	if b64 == "" {
		return []byte(text), nil
	}
	if text != "" {
		return nil, fmt.Errorf("both text %q and base64 given", text)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("decode base64: %w", err)
	}
	return b, nil
}

// KV is a key and its value, with etcd's fields.
type KV struct {
	Key            string `json:"key"`
	KeyBase64      string `json:"key_base64,omitempty"`
	Value          string `json:"value"`
	ValueBase64    string `json:"value_base64,omitempty"`
	CreateRevision int64  `json:"create_revision"`
	ModRevision    int64  `json:"mod_revision"`
	Version        int64  `json:"version"`
}

// NewKV converts a stored key-value.
func NewKV(kv store.KeyValue) KV {
	out := KV{CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version}
	out.Key, out.KeyBase64 = Text(kv.Key)
	out.Value, out.ValueBase64 = Text(kv.Value)
	return out
}
