package store

// PutWorkers is how many put batches may be in flight at once.
const PutWorkers = putWorkers

// SetPutWorkers changes how many put batches s may have in flight; only
// before its first put.
func SetPutWorkers(s *Store, n int) { s.puts.limit = n }

// QueuedPuts reports how many puts wait for a batch.
func QueuedPuts(s *Store) int {
	s.puts.mu.Lock()
	defer s.puts.mu.Unlock()
	return len(s.puts.queue)
}
