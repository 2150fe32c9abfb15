package check

import (
	"fmt"
	"sort"
)

// CheckReads checks that a read at a revision never changes: every answer
// to a Read that is not an error is the audit's state at that revision, or
// "compacted" with a compacted revision above it; and once compacted it
// stays compacted. Answers are taken in the order they arrived.
func CheckReads(h *History) []Anomaly {
	ix := newIndex(h.Committed)
	from := divergedFrom(h)
	var out []Anomaly
	for _, r := range h.Reads {
		if msg := checkRead(h, ix, r, from); msg != "" {
			out = append(out, Anomaly{Check: "read", Detail: fmt.Sprintf("read of %s at %d: %s", fmtRange(r.Key, r.End), r.Revision, msg)})
		}
	}
	return out
}

func checkRead(h *History, ix *index, r Read, from int64) string {
	answers := append([]ReadAnswer(nil), r.Answers...)
	sort.SliceStable(answers, func(i, j int) bool { return answers[i].At < answers[j].At })
	want := ix.stateAt(r.Revision, r.Key, r.End)
	judge := from == 0 || r.Revision < from // past a failover the audit is no judge
	var (
		first     []KV
		haveFirst bool
		compacted bool
		compactAt ReadAnswer
	)
	for _, a := range answers {
		if a.Compacted > 0 {
			if r.Revision >= a.Compacted {
				return fmt.Sprintf("refused as compacted at %v, but the compacted revision it gave is %d", a.At, a.Compacted)
			}
			if a.Compacted > h.Compacted {
				return fmt.Sprintf("refused as compacted at %d (at %v), above the compacted revision at the end (%d)", a.Compacted, a.At, h.Compacted)
			}
			if !compacted {
				compacted, compactAt = true, a
			}
			continue
		}
		if a.Err != "" {
			continue
		}
		if compacted {
			return fmt.Sprintf("answered %s at %v after being refused as compacted (%d) at %v", fmtKVs(a.KVs), a.At, compactAt.Compacted, compactAt.At)
		}
		if !haveFirst {
			first, haveFirst = a.KVs, true
		} else if !sameKVs(first, a.KVs) {
			return fmt.Sprintf("answer changed: %s first, %s at %v", fmtKVs(first), fmtKVs(a.KVs), a.At)
		}
		if judge && !sameKVs(want, a.KVs) {
			return fmt.Sprintf("answered %s at %v, the audit holds %s", fmtKVs(a.KVs), a.At, fmtKVs(want))
		}
	}
	return ""
}
