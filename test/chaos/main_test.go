package chaos

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	testbinary "github.com/walwatch/walwatch/test/binary"
	"github.com/walwatch/walwatch/test/pgtest"
)

var (
	seedFlag   = flag.Int64("seed", 0, "replay the one history of this seed (0: random seeds)")
	reportFlag = flag.String("report", os.Getenv("CHAOS_REPORT"), "write a report of the run here (default $CHAOS_REPORT; with CHAOS_HISTORIES set, report.md)")
)

// binary is the walwatch binary TestMain built, once per test binary.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testbinary.Main("chaos", &binary, func() int { return pgtest.Main(m) }))
}

// config is the size of a run.
type config struct {
	histories  int           // how many histories
	traffic    time.Duration // traffic (and faults) per history
	faults     int           // faults per history
	clients    int           // K
	watchers   int           // W
	linTimeout time.Duration // the linearizability check's budget per history
	report     string        // where to write the report; "" for none
}

// configFromEnv reads the run's size. Without CHAOS_HISTORIES it is the
// short run `go test ./...` does: about two minutes on two cores.
func configFromEnv() (config, error) {
	c := config{histories: 5, traffic: 14 * time.Second, faults: 4, clients: 8, watchers: 8, linTimeout: 20 * time.Second, report: *reportFlag}
	var errs []error
	if v := os.Getenv("CHAOS_HISTORIES"); v != "" {
		c.traffic, c.faults, c.linTimeout = 18*time.Second, 5, time.Minute
		if c.report == "" {
			c.report = "report.md" // the package directory: test/chaos/report.md
		}
		c.histories = envInt(&errs, "CHAOS_HISTORIES", v)
	}
	if v := os.Getenv("CHAOS_TRAFFIC"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("CHAOS_TRAFFIC=%q: %w", v, err))
		}
		c.traffic = d
	}
	if v := os.Getenv("CHAOS_FAULTS"); v != "" {
		c.faults = envInt(&errs, "CHAOS_FAULTS", v)
	}
	if v := os.Getenv("CHAOS_CLIENTS"); v != "" {
		c.clients = envInt(&errs, "CHAOS_CLIENTS", v)
	}
	if v := os.Getenv("CHAOS_WATCHERS"); v != "" {
		c.watchers = envInt(&errs, "CHAOS_WATCHERS", v)
	}
	if *seedFlag != 0 {
		c.histories = 1
	}
	if c.histories < 1 || c.clients < 1 || c.watchers < 1 || c.traffic <= 0 || c.faults < 0 {
		errs = append(errs, fmt.Errorf("chaos: a run needs histories, clients and watchers >= 1, traffic > 0, faults >= 0: %+v", c))
	}
	return c, errors.Join(errs...)
}

func envInt(errs *[]error, name, v string) int {
	n, err := strconv.Atoi(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s=%q: %w", name, v, err))
	}
	return n
}
