// Package auditlog is keyd's admission log: an append-only Merkle log
// (golang.org/x/mod/sumdb/tlog) over a store.Store, with signed checkpoints
// (C2SP tlog-checkpoint, note format), inclusion and consistency proofs, and
// the checks clients run on them.
//
// It is not a general transparency log server: no tiles, no witnesses; keyd
// serves what it returns over its own API.
package auditlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/admissionlog"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/keyd/store"
)

// Buckets the log keeps in the store. Keys are big-endian uint64 indexes.
const (
	// BucketHashes holds tlog's stored hashes by stored-hash index
	// (tlog.StoredHashIndex): every hash a proof or root needs.
	BucketHashes = "auditlog.hashes"
	// BucketLeaves holds the records' canonical encodings by index.
	BucketLeaves = "auditlog.leaves"
	// BucketMeta holds the tree size under "size".
	BucketMeta = "auditlog.meta"
)

var sizeKey = []byte("size")

// MaxEntries bounds one Entries call.
const MaxEntries = 1000

// Log is the admission log over a store. Appends from several keyd
// replicas over one etcd store are safe: the size is read and written in
// the same serialisable transaction as the leaf.
type Log struct {
	store  store.Store
	origin string
	signer note.Signer
	// Now stamps records appended with a zero Time (default time.Now).
	Now func() time.Time
}

// New returns the log with the given origin (its name in checkpoints),
// signing checkpoints with signer (see NewSigner), whose name must be the
// origin.
func New(st store.Store, origin string, signer note.Signer) (*Log, error) {
	if st == nil {
		return nil, errors.New("audit log: nil store")
	}
	if err := admissionlog.ValidOrigin(origin); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if signer == nil {
		return nil, errors.New("audit log: nil checkpoint signer")
	}
	if signer.Name() != origin {
		return nil, fmt.Errorf("audit log: signer named %q, want the origin %q", signer.Name(), origin)
	}
	return &Log{store: st, origin: origin, signer: signer, Now: time.Now}, nil
}

// Origin is the log's name in its checkpoints.
func (l *Log) Origin() string { return l.origin }

func indexKey(i int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(i)) }

// hashReader reads stored hashes inside tx, so an append sees the hashes
// of earlier appends in the same transaction.
func hashReader(tx store.Tx) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			v, err := tx.Get(BucketHashes, indexKey(x))
			if err != nil {
				return nil, fmt.Errorf("stored hash %d: %w", x, err)
			}
			if len(v) != tlog.HashSize {
				return nil, fmt.Errorf("stored hash %d: %d bytes", x, len(v))
			}
			copy(out[i][:], v)
		}
		return out, nil
	})
}

func readSize(tx store.Tx) (int64, error) {
	v, err := tx.Get(BucketMeta, sizeKey)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("log size: %w", err)
	}
	if len(v) != 8 || binary.BigEndian.Uint64(v) > 1<<62 {
		return 0, fmt.Errorf("log size: corrupt value %x", v)
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// AppendTx appends r inside the caller's transaction and returns its
// index: the record commits with the caller's other writes or not at all.
// A zero r.Time is set to l.Now().
func (l *Log) AppendTx(tx store.Tx, r Record) (int64, error) {
	if r.Time.IsZero() {
		r.Time = l.Now()
	}
	data, err := r.Marshal()
	if err != nil {
		return 0, err
	}
	n, err := readSize(tx)
	if err != nil {
		return 0, err
	}
	hashes, err := tlog.StoredHashes(n, data, hashReader(tx))
	if err != nil {
		return 0, fmt.Errorf("append entry %d: %w", n, err)
	}
	base := tlog.StoredHashIndex(0, n)
	for i, h := range hashes {
		if err := tx.Put(BucketHashes, indexKey(base+int64(i)), h[:]); err != nil {
			return 0, fmt.Errorf("append entry %d: %w", n, err)
		}
	}
	if err := tx.Put(BucketLeaves, indexKey(n), data); err != nil {
		return 0, fmt.Errorf("append entry %d: %w", n, err)
	}
	if err := tx.Put(BucketMeta, sizeKey, binary.BigEndian.AppendUint64(nil, uint64(n+1))); err != nil {
		return 0, fmt.Errorf("append entry %d: %w", n, err)
	}
	return n, nil
}

// Append appends r in its own transaction and returns its index once it
// is durable.
func (l *Log) Append(ctx context.Context, r Record) (int64, error) {
	var idx int64
	err := l.store.Update(ctx, func(tx store.Tx) error {
		var err error
		idx, err = l.AppendTx(tx, r)
		return err
	})
	return idx, err
}

// Checkpoint returns the current tree as a checkpoint and its signed note.
func (l *Log) Checkpoint(ctx context.Context) (Checkpoint, []byte, error) {
	c := Checkpoint{Origin: l.origin}
	err := l.store.View(ctx, func(tx store.Tx) error {
		var err error
		if c.Size, err = readSize(tx); err != nil {
			return err
		}
		// TreeHash(0) is SHA-256 of nothing, RFC 6962's empty root.
		c.Root, err = tlog.TreeHash(c.Size, hashReader(tx))
		return err
	})
	if err != nil {
		return Checkpoint{}, nil, fmt.Errorf("checkpoint: %w", err)
	}
	msg, err := note.Sign(&note.Note{Text: string(c.Body())}, l.signer)
	if err != nil {
		return Checkpoint{}, nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return c, msg, nil
}

// Size returns the number of entries.
func (l *Log) Size(ctx context.Context) (int64, error) {
	var n int64
	err := l.store.View(ctx, func(tx store.Tx) error {
		var err error
		n, err = readSize(tx)
		return err
	})
	return n, err
}

// Entries returns the leaves [start, end), at most MaxEntries of them.
func (l *Log) Entries(ctx context.Context, start, end int64) ([][]byte, error) {
	if start < 0 || end < start || end-start > MaxEntries {
		return nil, fmt.Errorf("entries [%d, %d): want 0 <= start <= end, at most %d", start, end, MaxEntries)
	}
	var out [][]byte
	err := l.store.View(ctx, func(tx store.Tx) error {
		n, err := readSize(tx)
		if err != nil {
			return err
		}
		if end > n {
			return fmt.Errorf("entries [%d, %d) beyond log size %d", start, end, n)
		}
		out = make([][]byte, 0, end-start)
		for i := start; i < end; i++ {
			v, err := tx.Get(BucketLeaves, indexKey(i))
			if err != nil {
				return fmt.Errorf("entry %d: %w", i, err)
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// ProveInclusion returns the proof that entry index is in the tree of
// size treeSize (RFC 6962 §2.1.1).
func (l *Log) ProveInclusion(ctx context.Context, index, treeSize int64) (tlog.RecordProof, error) {
	var p tlog.RecordProof
	err := l.store.View(ctx, func(tx store.Tx) error {
		n, err := readSize(tx)
		if err != nil {
			return err
		}
		if index < 0 || treeSize > n || index >= treeSize {
			return fmt.Errorf("inclusion proof of entry %d in tree %d: want 0 <= index < tree size <= %d", index, treeSize, n)
		}
		p, err = tlog.ProveRecord(treeSize, index, hashReader(tx))
		return err
	})
	return p, err
}

// ProveConsistency returns the proof that the tree of size newSize extends
// the tree of size oldSize (RFC 6962 §2.1.2). From the empty tree, and
// between equal sizes, the proof is empty.
func (l *Log) ProveConsistency(ctx context.Context, oldSize, newSize int64) (tlog.TreeProof, error) {
	var p tlog.TreeProof
	err := l.store.View(ctx, func(tx store.Tx) error {
		n, err := readSize(tx)
		if err != nil {
			return err
		}
		if oldSize < 0 || oldSize > newSize || newSize > n {
			return fmt.Errorf("consistency proof from %d to %d: want 0 <= old <= new <= %d", oldSize, newSize, n)
		}
		if oldSize == 0 || oldSize == newSize {
			p = tlog.TreeProof{}
			return nil
		}
		p, err = tlog.ProveTree(newSize, oldSize, hashReader(tx))
		return err
	})
	return p, err
}
