package replication_test

import (
	"os"
	"testing"

	"github.com/walwatch/walwatch/test/pgcluster"
)

func TestMain(m *testing.M) { os.Exit(pgcluster.Main(m)) }
