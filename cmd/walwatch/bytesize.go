package main

import (
	"fmt"
	"strconv"
	"strings"
)

// byteSize is a flag value for a size in bytes: a plain number of bytes, or
// one with a binary suffix (KiB, MiB, GiB; case does not matter), as in
// --window-bytes 64MiB.
type byteSize int

// byteUnits are the suffixes Set takes, largest first.
var byteUnits = []struct {
	name string
	size int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// String writes the size in the largest unit that divides it.
func (b *byteSize) String() string {
	n := int64(*b)
	if n == 0 {
		return "0"
	}
	for _, u := range byteUnits {
		if n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) // unreachable: B divides everything
}

func (b *byteSize) Set(s string) error {
	num, unit := strings.ToLower(strings.TrimSpace(s)), int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(num, strings.ToLower(u.name)); ok {
			num, unit = strings.TrimSpace(rest), u.size
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/unit {
		return fmt.Errorf("%q is not a size: want a positive number of bytes, e.g. 67108864 or 64MiB", s)
	}
	*b = byteSize(n * unit)
	return nil
}

func (b *byteSize) Type() string { return "bytes" }
