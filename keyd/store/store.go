// Package store is keyd's durable state behind one interface: the node
// registry, revocations, mesh addresses and the admission log all live in
// buckets of ordered keys. Backends: embedded bbolt (one keyd, fsync on
// commit) and etcd (several keyd replicas).
//
// It is not a cache and not a query engine: transactions are short, keys are
// ordered byte strings, values are opaque to the store.
package store

import (
	"context"
	"errors"
)

// Store is a transactional, ordered key-value store with buckets.
//
// An Update that returned nil is durable: it survives a crash of the process
// (bbolt: fsync; etcd: quorum commit). Updates are serialisable: two
// concurrent Updates that touch the same key never both commit on stale
// reads (bbolt serialises writers; etcd retries the function on conflict, so
// fn may run more than once and must not have side effects outside tx).
type Store interface {
	// View runs fn in a read-only transaction over a consistent snapshot.
	View(ctx context.Context, fn func(tx Tx) error) error
	// Update runs fn in a read-write transaction and commits it durably
	// before returning; if fn returns an error nothing is written.
	Update(ctx context.Context, fn func(tx Tx) error) error
	// Watch returns a channel that receives a value (coalesced: at most one
	// pending) after every committed Update that wrote to bucket, by this
	// process or, for shared backends, by any replica. It is closed when
	// ctx is done.
	Watch(ctx context.Context, bucket string) <-chan struct{}
	// Close releases the store.
	Close() error
}

// Tx is one transaction. Keys within a bucket are ordered bytewise.
type Tx interface {
	// Get returns the value of key in bucket, or ErrNotFound.
	Get(bucket string, key []byte) ([]byte, error)
	// Put sets key in bucket (creating the bucket if needed). Read-only
	// transactions return ErrReadOnly.
	Put(bucket string, key, value []byte) error
	// Delete removes key from bucket; deleting a missing key is no error.
	Delete(bucket string, key []byte) error
	// Scan calls fn for each key in bucket that starts with prefix, in key
	// order, until fn returns an error (returned by Scan) or ErrStop
	// (Scan returns nil).
	Scan(bucket string, prefix []byte, fn func(key, value []byte) error) error
}

// Errors every backend returns for these cases (test with errors.Is).
var (
	ErrNotFound = errors.New("store: not found")
	ErrReadOnly = errors.New("store: read-only transaction")
	ErrStop     = errors.New("store: stop scan")
)
