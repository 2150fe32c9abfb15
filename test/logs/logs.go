// Package logs collects what a program or a logger writes, for a test to
// read while it is still being written.
package logs

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer is an io.Writer safe for concurrent use, whose text can be read at
// any time.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the lines written so far that contain every one of words.
func (b *Buffer) Lines(words ...string) []string {
	var out []string
	for line := range strings.SplitSeq(b.String(), "\n") {
		ok := line != ""
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// Count counts the lines written so far that contain every one of words.
func (b *Buffer) Count(words ...string) int { return len(b.Lines(words...)) }
