// Package chaos runs walwatch under faults and records what every client
// and watcher saw, for the checks of package check to judge.
//
// Each history starts a private PostgreSQL cluster and a `walwatch cp`
// (reaching PostgreSQL through a TCP proxy the test can cut or black-hole;
// with --keyspace-copy in the histories of odd seeds),
// drives clients through etcd's v3 API, the HTTP API and plain SQL and
// watchers through etcd's Watch, Server-Sent Events and a Go hub, injects
// faults on a schedule drawn from the history's seed, lets everything
// settle, and hands the record to check.Run. Everything is in the tests:
//
//	go test ./test/chaos -run TestChaos -v            # a short run, random seed
//	go test ./test/chaos -run TestChaos -seed N -v    # replay history N
//	make chaos                                        # many histories and a report
package chaos
