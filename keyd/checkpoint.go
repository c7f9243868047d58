package keyd

import (
	"context"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// signedCheckpoint is a signed checkpoint of the admission log and the
// log size it commits to.
type signedCheckpoint struct {
	size uint64
	note []byte
}

// checkpoints hands out signed checkpoints that include a given entry. A
// checkpoint of size n proves every entry below n, so one signature and
// one tree hash serve every admission of a group commit (and every later
// one until the log grows past it), instead of one per admission. The log
// is append-only and its checkpoints are consistent with one another
// (auditlog.VerifyConsistency), so handing a node the newest checkpoint
// that covers its entry rather than a fresher one loses nothing: the node
// checks inclusion against it, and any later checkpoint extends it.
type checkpoints struct {
	mu     sync.Mutex // one signer at a time; the others reuse its result
	latest atomic.Pointer[signedCheckpoint]
}

// covering returns a signed checkpoint of at least size entries.
func (c *checkpoints) covering(ctx context.Context, l Log, size uint64) ([]byte, error) {
	if cp := c.latest.Load(); cp != nil && cp.size >= size {
		return cp.note, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cp := c.latest.Load(); cp != nil && cp.size >= size {
		return cp.note, nil
	}
	cp, note, err := l.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	// The store committed entry size-1 before we were called, so the
	// log cannot be shorter; check anyway rather than hand out a
	// checkpoint that does not include the node's entry.
	if uint64(cp.Size) < size {
		return nil, errShortCheckpoint
	}
	c.latest.Store(&signedCheckpoint{size: uint64(cp.Size), note: note})
	return note, nil
}

// gcPercent is keyd's GOGC. keyd's heap is small and short-lived (the
// registry and log live in the store's file mapping, not the Go heap), and
// every admission allocates a few hundred KiB of parsed certificates and
// evidence that die at once; collecting at 4x the live heap instead of 2x
// cut keyd's CPU per admission by about a tenth in BenchmarkAdmitSNP.
// memoryLimit bounds what that may cost: the collector runs more often
// rather than let the heap pass it.
const (
	gcPercent   = 400
	memoryLimit = 1 << 30
)

// tuneRuntime applies keyd's garbage collector settings to the process
// (Run, and the benchmarks that stand for it).
func tuneRuntime() {
	debug.SetGCPercent(gcPercent)
	debug.SetMemoryLimit(memoryLimit)
}
