package replication

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
)

// rowAt is a row of a put of key at revision rev, sub sub, with a value of
// size bytes; an empty key makes it a filler.
func rowAt(rev int64, sub int32, key string, size int) row {
	if key == "" {
		return row{revision: rev, sub: sub, tombstone: true}
	}
	own := append([]byte(key), make([]byte, size)...)
	return row{revision: rev, sub: sub, key: own[:len(key):len(key)], value: own[len(key):], version: 1}
}

// streamTxn is a committed transaction from the stream, ending at end, of
// one put per revision (of key "/r<revision>").
func streamTxn(end pglogrepl.LSN, revs ...int64) *txn {
	t := &txn{commitLSN: end - 1, endLSN: end}
	for _, rev := range revs {
		t.rows = append(t.rows, rowAt(rev, 0, fmt.Sprintf("/r%d", rev), 1))
	}
	return t
}

// fillerTxn is the stream's transaction of a filler row at rev.
func fillerTxn(end pglogrepl.LSN, rev int64) *txn {
	return &txn{commitLSN: end - 1, endLSN: end, rows: []row{rowAt(rev, 0, "", 0)}}
}

// tablePage is a page of the first table read: rows with no LSN.
func tablePage(revs ...int64) *txn {
	t := streamTxn(0, revs...)
	t.commitLSN, t.endLSN = 0, 0
	return t
}

// bigPut is a put of a value of spillValue bytes at rev.
func bigPut(rev int64) *txn {
	return &txn{commitLSN: 1, rows: []row{rowAt(rev, 0, "/big", spillValue)}}
}

const spillValue = 1000

// released describes what advance released: each revision as
// "rev:key,key" in sub order, with a ! after the revision when it was
// released spilled (keys only). A filler's revision has no keys (an event
// with an empty key would show as "").
func released(revs []revEvents) []string {
	var out []string
	for _, re := range revs {
		var keys []string
		for _, ev := range re.events {
			key := string(ev.Key)
			if key == "" {
				key = `""`
			}
			keys = append(keys, key)
		}
		mark := ""
		if re.spilled {
			mark = "!"
		}
		out = append(out, fmt.Sprintf("%d%s:%s", re.rev, mark, strings.Join(keys, ",")))
	}
	return out
}

// TestOrder states the rules of revision order, one arrival after another:
// what each arrival releases, where the watermark is, which holes a filler
// must settle, which of the stream's positions may be confirmed, and which
// buffered revisions are spilled.
func TestOrder(t *testing.T) {
	type step struct {
		arrive    []*txn
		released  []string // what advance releases after the arrivals (see released)
		watermark int64
		holes     []int64
		confirm   pglogrepl.LSN // the position the stream may confirm
		spilled   []int64       // buffered revisions without their values
	}
	tests := []struct {
		name     string
		maxBytes int // the buffer's bound on values; 0: no spilling
		steps    []step
	}{
		{
			name: "in order: each revision is released as it arrives",
			steps: []step{
				{arrive: []*txn{{base: 1}}, watermark: 1},
				{arrive: []*txn{streamTxn(10, 2)}, released: []string{"2:/r2"}, watermark: 2, confirm: 10},
				{arrive: []*txn{streamTxn(20, 3)}, released: []string{"3:/r3"}, watermark: 3, confirm: 20},
			},
		},
		{
			name: "the base alone moves the watermark",
			steps: []step{
				{arrive: []*txn{{base: 7}}, watermark: 7},
			},
		},
		{
			name: "out of order: a revision waits for the one before it",
			steps: []step{
				{arrive: []*txn{{base: 1}, streamTxn(10, 3)}, watermark: 1, holes: []int64{2}},
				{arrive: []*txn{streamTxn(20, 2)}, released: []string{"2:/r2", "3:/r3"}, watermark: 3, confirm: 20},
			},
		},
		{
			name: "a settled transaction behind an unsettled one is not confirmed",
			steps: []step{
				{arrive: []*txn{{base: 1}, streamTxn(10, 4)}, watermark: 1, holes: []int64{2, 3}},
				// 2's transaction is settled, but it committed after 4's,
				// which is not: confirming 20 would confirm 10 too.
				{arrive: []*txn{streamTxn(20, 2)}, released: []string{"2:/r2"}, watermark: 2, holes: []int64{3}},
				{arrive: []*txn{streamTxn(30, 3)}, released: []string{"3:/r3", "4:/r4"}, watermark: 4, confirm: 30},
			},
		},
		{
			name: "a transaction's rows are released together, in sub order",
			steps: []step{
				{arrive: []*txn{{base: 1}, {commitLSN: 9, endLSN: 10, rows: []row{
					rowAt(2, 2, "/c", 1), rowAt(2, 0, "/a", 1), rowAt(2, 1, "/b", 1),
				}}}, released: []string{"2:/a,/b,/c"}, watermark: 2, confirm: 10},
			},
		},
		{
			// A range delete that settled the revisions below its own
			// inserted a filler between its rows (found by the chaos
			// harness: rows after the filler were dropped as duplicates).
			name: "a transaction's revision split by a filler it inserted is released whole",
			steps: []step{
				{arrive: []*txn{{base: 1}, {commitLSN: 9, endLSN: 10, rows: []row{
					rowAt(3, 0, "/a", 1), rowAt(3, 1, "/b", 1), rowAt(2, 0, "", 0), rowAt(3, 2, "/c", 1),
				}}}, released: []string{"2:", "3:/a,/b,/c"}, watermark: 3, confirm: 10},
			},
		},
		{
			name: "duplicates after a reconnect are dropped and confirmed",
			steps: []step{
				{arrive: []*txn{{base: 1}, streamTxn(10, 2), streamTxn(20, 3)}, released: []string{"2:/r2", "3:/r3"}, watermark: 3, confirm: 20},
				// The server replays from its last saved position.
				{arrive: []*txn{streamTxn(10, 2), streamTxn(20, 3)}, watermark: 3, confirm: 20},
				{arrive: []*txn{streamTxn(30, 4)}, released: []string{"4:/r4"}, watermark: 4, confirm: 30},
			},
		},
		{
			name: "a duplicate of a buffered revision is dropped",
			steps: []step{
				{arrive: []*txn{{base: 1}, streamTxn(10, 3)}, watermark: 1, holes: []int64{2}},
				{arrive: []*txn{streamTxn(10, 3)}, watermark: 1, holes: []int64{2}},
				{arrive: []*txn{streamTxn(20, 2)}, released: []string{"2:/r2", "3:/r3"}, watermark: 3, confirm: 20},
			},
		},
		{
			name: "the first table read overlaps the stream",
			steps: []step{
				{arrive: []*txn{{base: 5}, tablePage(6, 7), {ready: true}}, released: []string{"6:/r6", "7:/r7"}, watermark: 7},
				// The stream starts at the slot's position, before the
				// read's snapshot: 5 and 7 are settled already.
				{arrive: []*txn{streamTxn(10, 5), streamTxn(20, 7), streamTxn(30, 8)}, released: []string{"8:/r8"}, watermark: 8, confirm: 30},
			},
		},
		{
			name: "only the first base counts",
			steps: []step{
				{arrive: []*txn{{base: 5}, streamTxn(10, 4), streamTxn(20, 5)}, watermark: 5, confirm: 20},
				{arrive: []*txn{{base: 9}}, watermark: 5, confirm: 20},
				{arrive: []*txn{streamTxn(30, 6)}, released: []string{"6:/r6"}, watermark: 6, confirm: 30},
			},
		},
		{
			name: "a hole is settled by a filler row, which has no events",
			steps: []step{
				{arrive: []*txn{{base: 1}, streamTxn(10, 3), streamTxn(20, 5)}, watermark: 1, holes: []int64{2, 4}},
				{arrive: []*txn{fillerTxn(30, 2)}, released: []string{"2:", "3:/r3"}, watermark: 3, holes: []int64{4}, confirm: 10},
				{arrive: []*txn{fillerTxn(40, 4)}, released: []string{"4:", "5:/r5"}, watermark: 5, confirm: 40},
			},
		},
		{
			name:     "spill: the newest buffered revisions lose their values, and arrive without them above the first spilled",
			maxBytes: 3 * (spillValue + len("/big") + eventOverhead),
			steps: []step{
				{arrive: []*txn{{base: 1}, bigPut(3), bigPut(4), bigPut(5), bigPut(6), bigPut(7), bigPut(8)},
					watermark: 1, holes: []int64{2}, spilled: []int64{6, 7, 8}},
				{arrive: []*txn{bigPut(10)}, watermark: 1, holes: []int64{2, 9}, spilled: []int64{6, 7, 8, 10}},
				{arrive: []*txn{bigPut(2)},
					released:  []string{"2:/big", "3:/big", "4:/big", "5:/big", "6!:/big", "7!:/big", "8!:/big"},
					watermark: 8, holes: []int64{9}, spilled: []int64{10}},
				// 9 arrives above the first spilled revision still buffered.
				{arrive: []*txn{bigPut(9)}, released: []string{"9!:/big", "10!:/big"}, watermark: 10},
				// The buffer emptied: values are kept again.
				{arrive: []*txn{bigPut(12)}, watermark: 10, holes: []int64{11}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			maxBytes := tt.maxBytes
			if maxBytes == 0 {
				maxBytes = 1 << 30
			}
			o := newOrder(maxBytes, slog.New(slog.DiscardHandler), nil)
			for i, st := range tt.steps {
				for _, x := range st.arrive {
					o.accept(x)
				}
				got := released(o.advance())
				o.spill()
				if !slices.Equal(got, st.released) {
					t.Errorf("step %d: released %v, want %v", i, got, st.released)
				}
				if o.watermark != st.watermark {
					t.Errorf("step %d: watermark %d, want %d", i, o.watermark, st.watermark)
				}
				if got := o.holes(maxFillBatch); !slices.Equal(got, st.holes) {
					t.Errorf("step %d: holes %v, want %v", i, got, st.holes)
				}
				if got := o.confirmed(); got != st.confirm {
					t.Errorf("step %d: may confirm %v, want %v", i, got, st.confirm)
				}
				var spilled []int64
				bytes := 0
				for rev, c := range o.buffer {
					if rev <= o.watermark {
						t.Errorf("step %d: revision %d buffered at or below the watermark %d", i, rev, o.watermark)
					}
					if c.spilled {
						spilled = append(spilled, rev)
					} else {
						bytes += c.bytes
					}
				}
				slices.Sort(spilled)
				if !slices.Equal(spilled, st.spilled) {
					t.Errorf("step %d: spilled %v, want %v", i, spilled, st.spilled)
				}
				if bytes != o.bufferBytes || bytes > maxBytes {
					t.Errorf("step %d: the buffer holds %d bytes of values, counted %d, bound %d", i, bytes, o.bufferBytes, maxBytes)
				}
				if o.holeOpen() != (len(o.buffer) > 0) {
					t.Errorf("step %d: hole open %v with %d revisions buffered", i, o.holeOpen(), len(o.buffer))
				}
			}
		})
	}
}

// TestOrderHoleAge: a hole's age, which decides when a filler settles it,
// runs from when the revision after the watermark went missing, starts
// again when the watermark moves, and ends with the hole.
func TestOrderHoleAge(t *testing.T) {
	o := newOrder(1<<30, slog.New(slog.DiscardHandler), nil)
	o.accept(&txn{base: 1})
	o.advance()
	if !o.holeFrom.IsZero() {
		t.Fatal("a hole's age runs with nothing buffered")
	}
	o.accept(streamTxn(10, 3))
	o.advance()
	first := o.holeFrom
	if first.IsZero() {
		t.Fatal("no age for the hole at 2")
	}
	o.accept(streamTxn(20, 5))
	o.advance()
	if o.holeFrom != first {
		t.Fatal("the hole's age started again while the watermark stood still")
	}
	o.accept(streamTxn(30, 2))
	o.advance()
	if o.holeFrom == first || o.holeFrom.IsZero() {
		t.Fatal("the hole at 4 took the age of the one at 2")
	}
	o.accept(streamTxn(40, 4))
	o.advance()
	if !o.holeFrom.IsZero() {
		t.Fatal("a hole's age runs after every hole closed")
	}
}

// At most limit holes are listed, lowest first.
func TestOrderHolesLimit(t *testing.T) {
	o := newOrder(1<<30, slog.New(slog.DiscardHandler), nil)
	o.accept(&txn{base: 1})
	o.accept(streamTxn(10, 100))
	o.advance()
	if got := o.holes(3); !slices.Equal(got, []int64{2, 3, 4}) {
		t.Fatalf("holes(3) = %v, want [2 3 4]", got)
	}
	if got := o.holes(maxFillBatch); len(got) != 98 || got[97] != 99 {
		t.Fatalf("holes = %d of them, last %v; want 2..99", len(got), got[len(got)-1])
	}
}

// Skipping to a compacted revision drops what is buffered at or below it,
// and what follows it is released; the stream's transactions that are now
// settled become confirmable.
func TestOrderSkip(t *testing.T) {
	o := newOrder(1<<30, slog.New(slog.DiscardHandler), nil)
	o.accept(&txn{base: 1})
	o.accept(streamTxn(10, 3))
	o.accept(streamTxn(20, 6))
	o.advance()
	if !o.missingUpTo(5) || o.missingUpTo(1) {
		t.Fatalf("missingUpTo(5) = %v, missingUpTo(1) = %v; want true, false", o.missingUpTo(5), o.missingUpTo(1))
	}
	o.skip(5)
	if len(o.buffer) != 1 || o.watermark != 5 || o.holeOpen() {
		t.Fatalf("after skip(5): %d buffered, watermark %d, hole open %v; want 1, 5, false", len(o.buffer), o.watermark, o.holeOpen())
	}
	if got := released(o.advance()); !slices.Equal(got, []string{"6:/r6"}) {
		t.Fatalf("released %v after the skip, want [6:/r6]", got)
	}
	if o.confirmed() != 20 || o.bufferBytes != 0 {
		t.Fatalf("confirmable %v, buffer bytes %d; want 20 and 0", o.confirmed(), o.bufferBytes)
	}
}
