package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It
// is 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) would
// need cgo to ask).
const clockTicks = 100

// procMeter reads what the processes of the systems under test have used:
// their CPU time (here) and the bytes they had written to storage
// (disk.go). They are the PostgreSQL postmaster and all its children
// (backends, walsenders, background workers), this process (benchmark
// clients, the walwatch hub), and the processes a system names (etcd's, a
// cp, kine).
type procMeter struct {
	postmaster int
}

// newProcMeter reads the postmaster's pid from the first line of
// dataDir/postmaster.pid.
func newProcMeter(dataDir string) (*procMeter, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("read postmaster pid: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return nil, fmt.Errorf("parse postmaster pid %q: %w", first, err)
	}
	return &procMeter{postmaster: pid}, nil
}

// cpuTimes is CPU time used, by whom.
type cpuTimes struct {
	postgres, self, extra time.Duration
}

func (t cpuTimes) total() time.Duration { return t.postgres + t.self + t.extra }

// cpuSample is the CPU time used so far, PostgreSQL's by process: a process
// that exits between two readings (a backend of a pool closing a
// connection) then loses its share of the interval instead of taking its
// whole lifetime's time off the sum.
type cpuSample struct {
	postgres    map[int]time.Duration
	self, extra time.Duration
}

// since is the CPU time used from earlier to s.
func (s cpuSample) since(earlier cpuSample) cpuTimes {
	var pg time.Duration
	for pid, t := range s.postgres {
		pg += t - earlier.postgres[pid] // 0 for a process started since
	}
	return cpuTimes{postgres: pg, self: s.self - earlier.self, extra: s.extra - earlier.extra}
}

// cpu returns the CPU time used so far by PostgreSQL, this process and
// extra, which must live through the interval measured.
func (m *procMeter) cpu(extra []int) (cpuSample, error) {
	s := cpuSample{postgres: map[int]time.Duration{}}
	tree, err := m.postgres()
	if err != nil {
		return s, err
	}
	for pid, st := range tree {
		s.postgres[pid] = st.cpu
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return s, fmt.Errorf("getrusage: %w", err)
	}
	s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for _, pid := range extra {
		st, err := readStat(pid)
		if err != nil {
			return s, err
		}
		s.extra += st.cpu
	}
	return s, nil
}

// postgres returns the postmaster and every process whose parent chain
// leads to it, by pid.
func (m *procMeter) postgres() (map[int]procStat, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	stats := map[int]procStat{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // gone since the listing
		}
		stats[pid] = st
	}
	if _, ok := stats[m.postmaster]; !ok {
		return nil, fmt.Errorf("postmaster %d is not running", m.postmaster)
	}
	tree := map[int]procStat{}
	for pid, st := range stats {
		for p, hops := pid, 0; hops < 64; hops++ {
			if p == m.postmaster {
				tree[pid] = st
				break
			}
			parent, ok := stats[p]
			if !ok || parent.ppid <= 1 {
				break
			}
			p = parent.ppid
		}
	}
	return tree, nil
}

type procStat struct {
	ppid int
	cpu  time.Duration // utime + stime
}

// readStat parses /proc/<pid>/stat. The command name (field 2) is in
// parentheses and may hold spaces, so fields are counted after the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, fmt.Errorf("read stat of process %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("process %d: malformed stat", pid)
	}
	// After ')': state(3) ppid(4) ... utime(14) stime(15).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return procStat{}, errors.New("short /proc stat line")
	}
	ppid, err1 := strconv.Atoi(f[1])
	utime, err2 := strconv.ParseInt(f[11], 10, 64)
	stime, err3 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, fmt.Errorf("process %d: parse stat: %w", pid, err)
	}
	return procStat{ppid: ppid, cpu: time.Duration(utime+stime) * time.Second / clockTicks}, nil
}
