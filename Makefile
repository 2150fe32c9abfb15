# The two commands a new user needs: `make demo` and `make test`.
GO ?= go

.PHONY: build demo test vet fmt bench-store

build:
	$(GO) build -o bin/walwatch ./cmd/walwatch

# cp, dp and two echo upstreams on a private PostgreSQL; Ctrl-C stops it all.
demo:
	$(GO) run ./cmd/walwatch demo

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -race -count=1 ./...

fmt:
	gofmt -l -w .

# Put throughput at 1, 8 and 32 concurrent writers against a private PostgreSQL.
bench-store:
	$(GO) test -run '^$$' -bench BenchmarkPut -benchtime 3s -count 3 ./store/
