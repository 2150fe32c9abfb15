# The two commands a new user needs: `make demo` and `make test`.
GO ?= go

.PHONY: build install demo test vet lint fmt bench-store bench bench-quick bench-etcd-api-floor chaos soak

# staticcheck, pinned: go run fetches this version through the module proxy.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

build:
	$(GO) build -o bin/walwatch ./cmd/walwatch

# Into $(go env GOPATH)/bin, so walwatch is on PATH as the README calls it.
install:
	$(GO) install ./cmd/walwatch

# cp, dp and two echo upstreams on a private PostgreSQL; Ctrl-C stops it all.
# The built binary, not go run: go run exits 1 whenever it is interrupted,
# even when the program it ran stopped cleanly.
demo: build
	./bin/walwatch demo

vet:
	$(GO) vet ./...

# gofmt must have nothing to say, and neither must staticcheck, in both modules.
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...
	cd test/bench && $(GO) run $(STATICCHECK) ./

# The benchmark is its own module (test/bench): vet it and run its report tests.
# One package at a time (-p 1): on two cores, packages run side by side starve
# the fault tests' WAL senders and hubs, and their deadlines.
test: vet lint
	$(GO) test -race -count=1 -p 1 ./...
	cd test/bench && $(GO) vet ./ && $(GO) test -count=1 ./

fmt:
	gofmt -l -w .

# Put throughput at 1, 8 and 32 concurrent writers against a private PostgreSQL,
# then two put batches in flight against four, five interleaved rounds.
bench-store:
	$(GO) test -run '^$$' -bench 'BenchmarkPut$$' -benchtime 3s -count 3 ./store/
	$(GO) test -run '^$$' -bench BenchmarkPutWorkers -benchtime 5x ./store/
	$(GO) test -run '^$$' -bench BenchmarkCurrentRevisionYield -benchtime 5x ./store/

# walwatch (directly, through cp's HTTP and etcd APIs) vs etcd, kine, the
# seed's LISTEN/NOTIFY design and the floor, side by side on this machine (its
# own Go module, so etcd's and kine's code stay out of the main one); writes
# docs/benchmarks/{results.json,README.md,chart.png}. About 21 minutes.
bench:
	cd test/bench && $(GO) run . -out ../../docs/benchmarks

# The same figures from shorter measurements, every system but kine, in
# about 2 minutes.
bench-quick:
	cd test/bench && $(GO) run . -quick -out ../../docs/benchmarks

# Target 7's figures on the thinnest servers of etcd's API over walwatch's
# store, beside cp's and etcd, alternated: how close any server beside
# PostgreSQL comes to etcd. Writes docs/benchmarks/etcd-api-floor.md in
# about 4 to 5 minutes.
bench-etcd-api-floor:
	cd test/bench && $(GO) run . -etcd-api-floor -out ../../docs/benchmarks

# Chaos histories (test/chaos): CHAOS_HISTORIES of them, about 10 minutes
# on two cores by default, and a report at CHAOS_REPORT.
CHAOS_HISTORIES ?= 25
CHAOS_REPORT ?= $(CURDIR)/test/chaos/report.md
chaos:
	CHAOS_HISTORIES=$(CHAOS_HISTORIES) CHAOS_REPORT=$(abspath $(CHAOS_REPORT)) \
		$(GO) test -count=1 -timeout 0 -run TestChaos -v ./test/chaos/

# Steady state (test/soak): SOAK_DURATION of mixed load against one cp with
# 1,000 watchers and auto-compaction, a sample a minute, the series in
# SOAK_REPORT; fails if memory, goroutines, the table, its dead rows or the
# slot's WAL grow after the warm-up.
SOAK_DURATION ?= 20m
SOAK_REPORT ?= $(CURDIR)/test/soak/report.md
soak:
	SOAK_DURATION=$(SOAK_DURATION) SOAK_REPORT=$(abspath $(SOAK_REPORT)) \
		$(GO) test -count=1 -timeout 0 -run TestSoak -v ./test/soak/
