package walwatch_test

import (
	"os"
	"testing"

	"github.com/walwatch/walwatch/test/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
