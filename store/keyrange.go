package store

import "bytes"

// KeyRange names keys as etcd does: Key alone when End is empty; [Key, End)
// otherwise; every key from Key on when End is "\x00".
type KeyRange struct {
	Key []byte
	End []byte
}

// Key is the range holding just k.
func Key(k []byte) KeyRange { return KeyRange{Key: k} }

// Prefix is the range of every key that starts with p.
func Prefix(p []byte) KeyRange { return KeyRange{Key: p, End: PrefixEnd(p)} }

// FromKey is the range of every key from k on.
func FromKey(k []byte) KeyRange { return KeyRange{Key: k, End: []byte{0}} }

// PrefixEnd returns the end of the range of keys starting with p: p with its
// last byte below 0xff incremented, or "\x00" (no end) when there is none.
func PrefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// Contains reports whether key is in the range.
func (r KeyRange) Contains(key []byte) bool {
	switch {
	case r.IsSingleKey():
		return bytes.Equal(key, r.Key)
	case r.IsOpenEnded():
		return bytes.Compare(key, r.Key) >= 0
	default:
		return bytes.Compare(key, r.Key) >= 0 && bytes.Compare(key, r.End) < 0
	}
}

// IsOpenEnded reports whether the range has no end: End is "\x00", every key
// from Key on. The one place that rule is written in Go.
func (r KeyRange) IsOpenEnded() bool { return len(r.End) == 1 && r.End[0] == 0 }

// Upper returns the range's exclusive upper bound: the key after Key for a
// single key, End for [Key, End), and nil when the range has no end.
func (r KeyRange) Upper() []byte {
	switch {
	case r.IsSingleKey():
		return append(bytes.Clone(r.Key), 0)
	case r.IsOpenEnded():
		return nil
	default:
		return r.End
	}
}

// IsSingleKey reports whether the range names exactly one key.
func (r KeyRange) IsSingleKey() bool { return len(r.End) == 0 }

// end returns End as the SQL functions take it: nil for a single key.
func (r KeyRange) end() []byte {
	if len(r.End) == 0 {
		return nil
	}
	return r.End
}
