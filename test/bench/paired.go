package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The idle round trip of a turn is one system's alone, measured minutes
// from the others'. This host's commit flush moves between a fast and a
// slow state (a put's p50 about 300 against 600 µs, for every system at
// once) that lasts seconds to minutes, so two turns' p50s can differ by the
// state they met rather than by the systems: in two full runs the floor met
// the fast state in four of its six turns and walwatch in none, while
// alternated on one quiet database walwatch's put took 1.11× the floor's
// insert. The paired round trip measures the systems that need no server
// of their own started for their turn together: each one's watcher open,
// probes in blocks of pairedBlock taken from each system in turn (the order
// reversed every other block), so that every system meets the same states
// in the same share.
var pairedSystems = []string{"walwatch", "notify", "floor", "etcd"}

const pairedBlock = 100

// pairedRoundTrips measures the paired idle round trip of the selected
// pairedSystems, cfg.rttSamples each, and records it as
// watch_rtt_paired_us.
func (b *bench) pairedRoundTrips(ctx context.Context, round int) (err error) {
	var syss []system
	for _, s := range b.systems {
		if slices.Contains(pairedSystems, s.name()) {
			syss = append(syss, s)
		}
	}
	if len(syss) < 2 {
		return nil
	}
	b.log.Info("paired round trips", "round", round)
	taps := make([]*tap, len(syss))
	var stops []func() error
	defer func() {
		for _, stop := range stops {
			err = errors.Join(err, stop())
		}
	}()
	for i, s := range syss {
		taps[i] = newTap([]byte(probeKey))
		stop, err := s.watch(ctx, prefix, taps[i].observe)
		if err != nil {
			return fmt.Errorf("paired round trips: %s: watch: %w", s.name(), err)
		}
		stops = append(stops, stop)
	}

	rtts := make([][]time.Duration, len(syss))
	order := make([]int, len(syss))
	for i := range order {
		order[i] = i
	}
	// A block may end early at its share of rttMaxTime, as a turn's series
	// does at rttMaxTime.
	blocks := (b.cfg.rttSamples + pairedBlock - 1) / pairedBlock
	blockTime := b.cfg.rttMaxTime / time.Duration(blocks)
	for range blocks {
		for _, i := range order {
			r, _, err := b.probe(ctx, syss[i].put, taps[i], pairedBlock, blockTime)
			if err != nil {
				return fmt.Errorf("paired round trips: %s: %w", syss[i].name(), err)
			}
			rtts[i] = append(rtts[i], r...)
		}
		slices.Reverse(order)
	}

	line := fmt.Sprintf("round %d paired       ", round)
	var parts []string
	for i, s := range syss {
		ps := percentiles(micros(rtts[i]), 0.5, 0.99, 0.999)
		for j, k := range []string{"p50", "p99", "p999"} {
			b.samples.add(s.name(), "watch_rtt_paired_us", k, ps[j])
		}
		parts = append(parts, fmt.Sprintf("%s=%.0f/%.0fus", s.name(), ps[0], ps[1]))
	}
	fmt.Fprintln(b.out, line+strings.Join(parts, " "))
	return nil
}
