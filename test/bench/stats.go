package main

import (
	"math"
	"slices"
	"time"
)

// percentiles returns the nearest-rank percentiles ps (0 < p <= 1) of xs.
// Every percentile this benchmark reports comes from here.
func percentiles(xs []float64, ps ...float64) []float64 {
	out := make([]float64, len(ps))
	if len(xs) == 0 {
		return out
	}
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	for i, p := range ps {
		rank := int(math.Ceil(p*float64(len(sorted)))) - 1
		out[i] = sorted[min(max(rank, 0), len(sorted)-1)]
	}
	return out
}

// median is the middle of xs (the mean of the two middle values for an even
// count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// micros converts durations to microseconds.
func micros(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Microsecond)
	}
	return out
}

// millis converts durations to milliseconds.
func millis(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}

// round3 keeps three significant decimals of x, so results.json stays readable.
func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// samples collects one figure per round under a name (system, metric, key)
// and gives their median at the end.
type samples map[[3]string][]float64

func (s samples) add(system, metric, key string, v float64) {
	k := [3]string{system, metric, key}
	s[k] = append(s[k], v)
}

// median returns the median of what was added under the name, and whether
// anything was.
func (s samples) median(system, metric, key string) (float64, bool) {
	xs, ok := s[[3]string{system, metric, key}]
	return round3(median(xs)), ok
}

// keys lists the keys added under system and metric.
func (s samples) keys(system, metric string) []string {
	var out []string
	for k := range s {
		if k[0] == system && k[1] == metric {
			out = append(out, k[2])
		}
	}
	slices.Sort(out)
	return out
}
