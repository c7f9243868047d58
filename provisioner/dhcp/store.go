package dhcp

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketLeases = []byte("leases/v1")

// Lease states. Offers live only in memory; bound and declined leases are
// written to disk before the client hears about them.
const (
	stateOffered  uint8 = 1
	stateBound    uint8 = 2
	stateDeclined uint8 = 3
)

// lease is one address's binding. mac is the raw hardware address as a
// string (map key friendly); a declined lease has none.
type lease struct {
	ip     uint32
	mac    string
	state  uint8
	expiry int64 // unix nanoseconds
	// stored: a record for ip is on disk (or queued), possibly stale, so
	// forgetting ip must delete it.
	stored bool
}

// recordVersion prefixes every stored value so that the format can change.
const recordVersion = 1

// encodeLease is the on-disk value: version, state, expiry (big-endian unix
// nanoseconds), hardware-address length, hardware address.
func encodeLease(l *lease) []byte {
	b := make([]byte, 11+len(l.mac))
	b[0] = recordVersion
	b[1] = l.state
	binary.BigEndian.PutUint64(b[2:10], uint64(l.expiry))
	b[10] = byte(len(l.mac))
	copy(b[11:], l.mac)
	return b
}

func decodeLease(key, val []byte) (*lease, error) {
	if len(key) != 4 {
		return nil, fmt.Errorf("lease key: %d bytes, want 4", len(key))
	}
	if len(val) < 11 {
		return nil, fmt.Errorf("lease %x: value of %d bytes is truncated", key, len(val))
	}
	if val[0] != recordVersion {
		return nil, fmt.Errorf("lease %x: record version %d, want %d", key, val[0], recordVersion)
	}
	l := &lease{ip: binary.BigEndian.Uint32(key), state: val[1], expiry: int64(binary.BigEndian.Uint64(val[2:10]))}
	if l.state != stateBound && l.state != stateDeclined {
		return nil, fmt.Errorf("lease %x: state %d is not bound or declined", key, l.state)
	}
	n := int(val[10])
	if n > 16 || len(val) != 11+n {
		return nil, fmt.Errorf("lease %x: hardware address length %d does not match value of %d bytes", key, n, len(val))
	}
	if (l.state == stateBound) != (n > 0) {
		return nil, fmt.Errorf("lease %x: state %d with hardware address length %d", key, l.state, n)
	}
	l.mac = string(val[11:])
	return l, nil
}

func leaseKey(ip uint32) []byte {
	k := make([]byte, 4)
	binary.BigEndian.PutUint32(k, ip)
	return k
}

// write is one pending change: val nil deletes the key. done, if set, runs
// after the batch holding the write committed (err nil) or failed.
type write struct {
	key  []byte
	val  []byte
	done func(err error)
}

// store is the bbolt lease file with a group committer: writes that arrive
// while a commit is in flight are gathered into the next transaction, so one
// fsync covers many leases, and each write's done runs only after its batch
// is on disk.
type store struct {
	db       *bolt.DB
	in       chan write
	maxBatch int
	observe  func(n int, d time.Duration, err error)
	// fault, when set, runs inside each commit's transaction; an error
	// aborts the batch (tests use it to show that no ACK outruns the disk).
	fault   func() error
	stopped chan struct{}
}

func openStore(path string, maxBatch int) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		// Another server holding the file is a configuration error, not
		// something to wait for.
		Timeout:      time.Second,
		FreelistType: bolt.FreelistMapType,
		// The freelist is rebuilt on open (a lease file is small), so each
		// commit writes only lease pages and the meta page.
		NoFreelistSync: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open lease_db %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketLeases)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("lease_db %s: create bucket: %w", path, err)
	}
	return &store{db: db, in: make(chan write, 4*maxBatch), maxBatch: maxBatch, stopped: make(chan struct{})}, nil
}

// load calls fn for every stored lease; records that do not decode are
// returned as errors naming the key and skipped.
func (s *store) load(fn func(*lease)) (bad []error, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			l, err := decodeLease(k, v)
			if err != nil {
				bad = append(bad, err)
				return nil
			}
			fn(l)
			return nil
		})
	})
	return bad, err
}

// delete removes keys in one transaction (before the committer runs).
func (s *store) delete(keys [][]byte) error {
	if len(keys) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLeases)
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// run commits until in is closed and drained.
func (s *store) run() {
	defer close(s.stopped)
	batch := make([]write, 0, s.maxBatch)
	for {
		w, ok := <-s.in
		if !ok {
			return
		}
		batch = append(batch[:0], w)
	fill:
		for len(batch) < s.maxBatch {
			select {
			case w, ok := <-s.in:
				if !ok {
					break fill
				}
				batch = append(batch, w)
			default:
				break fill
			}
		}
		start := time.Now()
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketLeases)
			if s.fault != nil {
				if err := s.fault(); err != nil {
					return err
				}
			}
			for _, w := range batch {
				var err error
				if w.val == nil {
					err = b.Delete(w.key)
				} else {
					err = b.Put(w.key, w.val)
				}
				if err != nil {
					return fmt.Errorf("lease %x: %w", w.key, err)
				}
			}
			return nil
		})
		if s.observe != nil {
			s.observe(len(batch), time.Since(start), err)
		}
		for i := range batch {
			if batch[i].done != nil {
				batch[i].done(err)
			}
			batch[i] = write{}
		}
	}
}

// close stops the committer after it drained what was queued, then closes
// the file. Nothing may call submit after close.
func (s *store) close() error {
	close(s.in)
	<-s.stopped
	return s.db.Close()
}
