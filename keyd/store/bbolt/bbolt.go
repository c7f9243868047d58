// Package bbolt is keyd's embedded store: store.Store on one bbolt file,
// fsync on every commit, with group commit so a boot storm shares fsyncs.
//
// It is not shared between processes or replicas (bbolt locks the file);
// several keyd replicas use the etcd backend instead.
package bbolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/palisade-cc/palisade/keyd/store"
)

var _ store.Store = (*Store)(nil)

// ErrClosed is returned by View and Update after Close.
var ErrClosed = errors.New("bbolt store: closed")

// Options tune Open. The zero value is the production configuration.
type Options struct {
	// Timeout bounds the wait for the file lock held by another process
	// (default 10 s); bbolt's own default would wait forever.
	Timeout time.Duration
	// MaxBatch caps how many Update calls share one transaction and one
	// fsync (default 512): larger batches amortise the fsync further but
	// make every caller in the batch wait for all of them.
	MaxBatch int
	// Mode is the file mode of a new database (default 0600: keyd's state
	// is secret-adjacent and no other user needs it).
	Mode os.FileMode
}

// Store is store.Store on bbolt. Updates are committed by one goroutine
// that gathers every Update queued while the previous commit was being
// fsynced into the next transaction (group commit). Each function in a
// batch runs against the effects of the ones before it, exactly as if the
// Updates had run one after the other; a function that fails is undone
// inside the batch without disturbing the others, so unlike bolt.DB.Batch
// no function is ever run twice.
type Store struct {
	db       *bolt.DB
	path     string
	commits  atomic.Int64 // transactions committed by the group committer
	maxBatch int

	mu     sync.Mutex
	queue  []*request
	closed bool
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}

	watchMu  sync.Mutex
	watchers map[string]map[*watcher]struct{}
	watchEnd bool
}

type request struct {
	ctx      context.Context
	fn       func(store.Tx) error
	err      error
	panicked bool
	panicVal any
	buckets  map[string]struct{}
	done     chan struct{}
}

type watcher struct{ ch chan struct{} }

// Open opens (creating if needed) the bbolt database at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	db, err := bolt.Open(path, opts.Mode, &bolt.Options{
		Timeout: opts.Timeout,
		// NoSync stays false: an Update that returned nil must survive a
		// crash (store.Store contract), so every commit is fsynced.
		NoSync:       false,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("open bbolt store %s: %w", path, err)
	}
	s := &Store{
		db:       db,
		path:     path,
		maxBatch: opts.MaxBatch,
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		watchers: make(map[string]map[*watcher]struct{}),
	}
	go s.committer()
	return s, nil
}

// View runs fn in a read-only bbolt transaction (a consistent snapshot).
func (s *Store) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return s.db.View(func(btx *bolt.Tx) error {
		return fn(&tx{btx: btx})
	})
}

// Update queues fn for the next group commit and returns once that commit
// is on disk. If ctx ends before fn has started, fn does not run and the
// ctx error is returned; once fn has started, Update waits for the commit,
// so its result never lies about what was written.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &request{ctx: ctx, fn: fn, done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.queue = append(s.queue, r)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	<-r.done
	if r.panicked {
		// Re-raise in the caller's goroutine, as a plain bolt Update would.
		panic(r.panicVal)
	}
	return r.err
}

// Commits is the number of transactions the group committer has
// committed (each one fsync): Updates per commit is how much a storm
// shares its fsyncs.
func (s *Store) Commits() int64 { return s.commits.Load() }

// Watch returns a channel that receives a value after every committed
// Update that wrote to bucket. It is closed when ctx is done or the store
// is closed.
func (s *Store) Watch(ctx context.Context, bucket string) <-chan struct{} {
	w := &watcher{ch: make(chan struct{}, 1)}
	s.watchMu.Lock()
	if s.watchEnd {
		s.watchMu.Unlock()
		close(w.ch)
		return w.ch
	}
	set := s.watchers[bucket]
	if set == nil {
		set = make(map[*watcher]struct{})
		s.watchers[bucket] = set
	}
	set[w] = struct{}{}
	s.watchMu.Unlock()
	context.AfterFunc(ctx, func() {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		if set, ok := s.watchers[bucket]; ok {
			if _, ok := set[w]; ok {
				delete(set, w)
				if len(set) == 0 {
					delete(s.watchers, bucket)
				}
				close(w.ch)
			}
		}
	})
	return w.ch
}

// Close commits the Updates already queued, closes every watch channel
// and the database file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done

	s.watchMu.Lock()
	s.watchEnd = true
	for _, set := range s.watchers {
		for w := range set {
			close(w.ch)
		}
	}
	s.watchers = nil
	s.watchMu.Unlock()
	return s.db.Close()
}

func (s *Store) committer() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			// Close sets closed before stop, so the queue cannot grow:
			// drain what was accepted, then exit.
			for s.runBatch() {
			}
			return
		}
		for s.runBatch() {
		}
	}
}

// runBatch commits up to maxBatch queued requests in one transaction and
// reports whether there was anything to do.
func (s *Store) runBatch() bool {
	s.mu.Lock()
	n := min(len(s.queue), s.maxBatch)
	batch := s.queue[:n:n]
	s.queue = s.queue[n:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
	s.mu.Unlock()
	if n == 0 {
		return false
	}

	s.commits.Add(1)
	err := s.db.Update(func(btx *bolt.Tx) error {
		for _, r := range batch {
			if err := r.ctx.Err(); err != nil {
				r.err = err
				continue
			}
			t := &tx{btx: btx, writable: true, undo: make(map[string]map[string]undoEntry)}
			s.call(r, t)
			if r.err != nil || r.panicked {
				// Undo this function's writes so the batch commits as if
				// it had never run; if that fails, fail the whole batch.
				if uerr := t.rollback(); uerr != nil {
					return fmt.Errorf("undo failed update: %w", uerr)
				}
				continue
			}
			r.buckets = t.written
		}
		return nil
	})
	if err != nil {
		for _, r := range batch {
			if r.err == nil && !r.panicked {
				r.err = fmt.Errorf("commit: %w", err)
				r.buckets = nil
			}
		}
	}

	// Notify before releasing the callers: when Update returns, the
	// notification for its write is already pending.
	s.watchMu.Lock()
	for _, r := range batch {
		for b := range r.buckets {
			for w := range s.watchers[b] {
				select {
				case w.ch <- struct{}{}:
				default: // coalesced: one pending notification is enough
				}
			}
		}
	}
	s.watchMu.Unlock()
	for _, r := range batch {
		close(r.done)
	}
	return true
}

func (s *Store) call(r *request, t *tx) {
	defer func() {
		if v := recover(); v != nil {
			r.panicked, r.panicVal = true, v
		}
	}()
	r.err = r.fn(t)
}

type undoEntry struct {
	old     []byte
	existed bool
}

// tx is store.Tx over a bbolt transaction. A writable tx keeps an undo log
// of the first old value of every key it changes, so one function of a
// group commit can be rolled back without rolling back the others.
type tx struct {
	btx      *bolt.Tx
	writable bool
	writes   int
	undo     map[string]map[string]undoEntry
	created  []string
	written  map[string]struct{}
}

func checkName(bucket string, key []byte) error {
	if bucket == "" {
		return errors.New("bbolt store: empty bucket name")
	}
	if key != nil && len(key) == 0 {
		return fmt.Errorf("bbolt store: empty key in bucket %q", bucket)
	}
	if len(key) > bolt.MaxKeySize {
		return fmt.Errorf("bbolt store: key of %d bytes in bucket %q exceeds %d", len(key), bucket, bolt.MaxKeySize)
	}
	return nil
}

func (t *tx) Get(bucket string, key []byte) ([]byte, error) {
	if err := checkName(bucket, key); err != nil {
		return nil, err
	}
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil, store.ErrNotFound
	}
	v := b.Get(key)
	if v == nil {
		return nil, store.ErrNotFound
	}
	// bbolt's value is read-only mmap'd memory valid only inside the
	// transaction: hand out a copy.
	return bytes.Clone(v), nil
}

func (t *tx) Put(bucket string, key, value []byte) error {
	if !t.writable {
		return store.ErrReadOnly
	}
	if err := checkName(bucket, key); err != nil {
		return err
	}
	if int64(len(value)) > bolt.MaxValueSize {
		return fmt.Errorf("bbolt store: value of %d bytes for bucket %q exceeds %d", len(value), bucket, bolt.MaxValueSize)
	}
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		var err error
		if b, err = t.btx.CreateBucket([]byte(bucket)); err != nil {
			return fmt.Errorf("create bucket %q: %w", bucket, err)
		}
		t.created = append(t.created, bucket)
	}
	t.remember(bucket, b, key)
	// bbolt keeps the slices until commit: copy, the caller may reuse them.
	if value == nil {
		value = []byte{}
	}
	if err := b.Put(bytes.Clone(key), bytes.Clone(value)); err != nil {
		return fmt.Errorf("put %q in bucket %q: %w", key, bucket, err)
	}
	t.wrote(bucket)
	return nil
}

func (t *tx) Delete(bucket string, key []byte) error {
	if !t.writable {
		return store.ErrReadOnly
	}
	if err := checkName(bucket, key); err != nil {
		return err
	}
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	if b.Get(key) == nil {
		return nil
	}
	t.remember(bucket, b, key)
	if err := b.Delete(key); err != nil {
		return fmt.Errorf("delete %q from bucket %q: %w", key, bucket, err)
	}
	t.wrote(bucket)
	return nil
}

func (t *tx) wrote(bucket string) {
	t.writes++
	if t.written == nil {
		t.written = make(map[string]struct{})
	}
	t.written[bucket] = struct{}{}
}

func (t *tx) remember(bucket string, b *bolt.Bucket, key []byte) {
	m := t.undo[bucket]
	if m == nil {
		m = make(map[string]undoEntry)
		t.undo[bucket] = m
	}
	if _, ok := m[string(key)]; ok {
		return
	}
	v := b.Get(key)
	m[string(key)] = undoEntry{old: bytes.Clone(v), existed: v != nil}
}

func (t *tx) rollback() error {
	created := make(map[string]bool, len(t.created))
	for _, b := range t.created {
		created[b] = true
	}
	for bucket, m := range t.undo {
		if created[bucket] {
			continue
		}
		b := t.btx.Bucket([]byte(bucket))
		if b == nil {
			return fmt.Errorf("bucket %q vanished", bucket)
		}
		for k, e := range m {
			var err error
			if e.existed {
				err = b.Put([]byte(k), e.old)
			} else {
				err = b.Delete([]byte(k))
			}
			if err != nil {
				return fmt.Errorf("restore %q in bucket %q: %w", k, bucket, err)
			}
		}
	}
	for _, b := range t.created {
		if err := t.btx.DeleteBucket([]byte(b)); err != nil {
			return fmt.Errorf("remove bucket %q: %w", b, err)
		}
	}
	return nil
}

func (t *tx) Scan(bucket string, prefix []byte, fn func(key, value []byte) error) error {
	if err := checkName(bucket, nil); err != nil {
		return err
	}
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	c := b.Cursor()
	k, v := c.Seek(prefix)
	for k != nil && bytes.HasPrefix(k, prefix) {
		if v == nil {
			// A nested bucket: the store never creates one, skip it.
			k, v = c.Next()
			continue
		}
		key := bytes.Clone(k)
		before := t.writes
		if err := fn(key, bytes.Clone(v)); err != nil {
			if errors.Is(err, store.ErrStop) {
				return nil
			}
			return err
		}
		if t.writes != before {
			// bbolt cursors are invalidated by writes to their bucket:
			// reposition after the last key handed out.
			k, v = c.Seek(key)
			if k != nil && bytes.Equal(k, key) {
				k, v = c.Next()
			}
			continue
		}
		k, v = c.Next()
	}
	return nil
}
