// Package etcd is keyd's shared store: store.Store on an etcd cluster, so
// several keyd replicas see one registry and one admission log.
//
// It is not an etcd client library: it maps buckets and keys to etcd keys
// under one prefix and gives them store.Store's transaction semantics.
package etcd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/palisade-cc/palisade/keyd/store"
)

var _ store.Store = (*Store)(nil)

// ErrClosed is returned by View and Update after Close.
var ErrClosed = errors.New("etcd store: closed")

// maxCompares is how many per-key compares one commit carries before the
// read set is widened to whole buckets: etcd rejects transactions with
// more than --max-txn-ops (default 128) compares.
const maxCompares = 100

// scanPage is the number of keys fetched per range request in Scan (a
// variable so tests can make it small enough to page).
var scanPage int64 = 512

// Options tune Open. The zero value is the production configuration for
// an etcd without TLS or authentication.
type Options struct {
	// DialTimeout bounds connecting (default 5 s).
	DialTimeout time.Duration
	// TLS, Username and Password are handed to the etcd client.
	TLS                *tls.Config
	Username, Password string
	// Logger receives the etcd client's own logs (default: none).
	Logger *zap.Logger
}

// Store is store.Store on etcd. Keys live at
//
//	<prefix>/d/<bucket>/<key>   data, <bucket> with '%' and '/' percent-escaped
//	<prefix>/v/<bucket>         bucket version, rewritten by every Update that writes the bucket
//
// Escaping keeps the first '/' after the bucket unambiguous, so no bucket
// and key pair can collide with another, and keys keep their byte order.
// One Update commits in one etcd transaction, so it may write at most the
// server's --max-txn-ops (default 128) keys, less one per bucket written.
//
// Update is optimistic: fn's reads happen at one revision, and the commit
// compares the mod revision of every key read (and the version of every
// bucket scanned, which catches inserted and deleted keys — phantoms)
// against it; on conflict fn runs again.
type Store struct {
	cli    *clientv3.Client
	prefix string

	closeCtx context.Context
	closeFn  context.CancelFunc
	mu       sync.Mutex
	closed   bool
	watches  sync.WaitGroup
}

// Open connects to the etcd cluster at endpoints and returns the store
// under prefix (e.g. "/palisade/keyd"). It checks that etcd answers.
func Open(ctx context.Context, endpoints []string, prefix string, opts Options) (*Store, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints")
	}
	prefix = strings.TrimRight(prefix, "/")
	if prefix == "" {
		return nil, errors.New("etcd store: empty prefix: keyd's keys need their own subtree")
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: opts.DialTimeout,
		TLS:         opts.TLS,
		Username:    opts.Username,
		Password:    opts.Password,
		Logger:      opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd store: connect %v: %w", endpoints, err)
	}
	pctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, prefix+"/v/", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd store: reach %v: %w", endpoints, err)
	}
	s := &Store{cli: cli, prefix: prefix}
	s.closeCtx, s.closeFn = context.WithCancel(context.Background())
	return s, nil
}

func escapeBucket(b string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(b)
}

func (s *Store) dataPrefix(bucket string) string {
	return s.prefix + "/d/" + escapeBucket(bucket) + "/"
}

func (s *Store) versionKey(bucket string) string {
	return s.prefix + "/v/" + escapeBucket(bucket)
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// View runs fn over the snapshot at the revision of its first read.
func (s *Store) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.isClosed() {
		return ErrClosed
	}
	return fn(s.newTx(ctx, false))
}

// Update runs fn optimistically and commits its writes in one etcd
// transaction guarded by its read set; on a conflict fn runs again. An
// error of the commit itself (etcd unreachable, time-out) is returned as
// is: etcd may or may not have applied it.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.isClosed() {
			return ErrClosed
		}
		t := s.newTx(ctx, true)
		err := fn(t)
		if errors.Is(err, rpctypes.ErrCompacted) {
			// The snapshot fn read from was compacted away: start again
			// from a fresh one.
			if err := backoff(ctx, attempt); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if len(t.writes) == 0 {
			return nil
		}
		resp, err := s.cli.Txn(ctx).If(t.compares()...).Then(t.ops()...).Commit()
		if err != nil {
			return fmt.Errorf("etcd store: commit: %w", err)
		}
		if resp.Succeeded {
			return nil
		}
		if err := backoff(ctx, attempt); err != nil {
			return err
		}
	}
}

// backoff waits a random time that grows with attempt, so that writers
// contending for one key do not retry in lock step.
func backoff(ctx context.Context, attempt int) error {
	limit := time.Millisecond << min(attempt, 6) // up to 64 ms
	tm := time.NewTimer(rand.N(limit) + time.Millisecond/4)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// Watch watches bucket's version key, which every Update writing the
// bucket rewrites in the same etcd transaction, so writes by any replica
// notify. Start revision is pinned before Watch returns: a commit after
// that is never missed. If etcd's watch breaks (compaction, connection),
// Watch re-establishes it and notifies once, since a write may have been
// missed.
func (s *Store) Watch(ctx context.Context, bucket string) <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		close(ch)
		return ch
	}
	s.watches.Add(1)
	s.mu.Unlock()

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.closeCtx, cancel)
	notify := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	key := s.versionKey(bucket)
	rev, err := s.currentRev(wctx, key)
	if err != nil {
		rev = 0 // watch from whatever etcd's "now" is, and say something may have changed
		notify()
	}
	go func() {
		defer s.watches.Done()
		defer close(ch)
		defer stop()
		defer cancel()
		for attempt := 0; wctx.Err() == nil; attempt++ {
			var opts []clientv3.OpOption
			if rev > 0 {
				opts = append(opts, clientv3.WithRev(rev+1))
			}
			for wr := range s.cli.Watch(clientv3.WithRequireLeader(wctx), key, opts...) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					rev = max(rev, ev.Kv.ModRevision)
				}
				if len(wr.Events) > 0 {
					notify()
					attempt = 0
				}
			}
			if wctx.Err() != nil {
				return
			}
			// The watch ended without us asking: resume from the current
			// revision and notify conservatively.
			if backoff(wctx, attempt) != nil {
				return
			}
			if r, err := s.currentRev(wctx, key); err == nil {
				rev = r
			}
			notify()
		}
	}()
	return ch
}

func (s *Store) currentRev(ctx context.Context, key string) (int64, error) {
	resp, err := s.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Close ends every watch and closes the etcd client.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.closeFn()
	s.watches.Wait()
	return s.cli.Close()
}

type write struct {
	value []byte
	del   bool
}

// tx buffers writes and records what it read. Reads go to etcd at the
// revision of the transaction's first read.
type tx struct {
	s        *Store
	ctx      context.Context
	writable bool
	rev      int64
	reads    map[string]string // etcd key → bucket
	scanned  map[string]bool
	writes   map[string]write // etcd key → buffered write
	buckets  map[string]bool  // buckets written
}

func (s *Store) newTx(ctx context.Context, writable bool) *tx {
	return &tx{s: s, ctx: ctx, writable: writable, reads: map[string]string{}, scanned: map[string]bool{},
		writes: map[string]write{}, buckets: map[string]bool{}}
}

func checkName(bucket string, key []byte) error {
	if bucket == "" {
		return errors.New("etcd store: empty bucket name")
	}
	if key != nil && len(key) == 0 {
		return fmt.Errorf("etcd store: empty key in bucket %q", bucket)
	}
	return nil
}

func (t *tx) revOpts() []clientv3.OpOption {
	if t.rev == 0 {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithRev(t.rev)}
}

func (t *tx) Get(bucket string, key []byte) ([]byte, error) {
	if err := checkName(bucket, key); err != nil {
		return nil, err
	}
	k := t.s.dataPrefix(bucket) + string(key)
	if w, ok := t.writes[k]; ok {
		if w.del {
			return nil, store.ErrNotFound
		}
		return bytes.Clone(w.value), nil
	}
	resp, err := t.s.cli.Get(t.ctx, k, t.revOpts()...)
	if err != nil {
		return nil, fmt.Errorf("etcd store: get %q from bucket %q: %w", key, bucket, err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	if t.writable {
		t.reads[k] = bucket
	}
	if len(resp.Kvs) == 0 {
		return nil, store.ErrNotFound
	}
	return resp.Kvs[0].Value, nil
}

func (t *tx) Put(bucket string, key, value []byte) error {
	if !t.writable {
		return store.ErrReadOnly
	}
	if err := checkName(bucket, key); err != nil {
		return err
	}
	t.writes[t.s.dataPrefix(bucket)+string(key)] = write{value: bytes.Clone(value)}
	t.buckets[bucket] = true
	return nil
}

func (t *tx) Delete(bucket string, key []byte) error {
	if !t.writable {
		return store.ErrReadOnly
	}
	if err := checkName(bucket, key); err != nil {
		return err
	}
	t.writes[t.s.dataPrefix(bucket)+string(key)] = write{del: true}
	t.buckets[bucket] = true
	return nil
}

// Scan merges etcd's keys at the transaction's revision with the
// transaction's own buffered writes. Keys first written during the scan
// are not visited; keys deleted during it are not visited after.
func (t *tx) Scan(bucket string, prefix []byte, fn func(key, value []byte) error) error {
	if err := checkName(bucket, nil); err != nil {
		return err
	}
	bp := t.s.dataPrefix(bucket)
	start := bp + string(prefix)
	end := clientv3.GetPrefixRangeEnd(start)
	if t.writable {
		t.scanned[bucket] = true
	}
	// Buffered keys in range, in order, as of the start of the scan.
	var local []string
	for k, w := range t.writes {
		if !w.del && k >= start && k < end {
			local = append(local, k)
		}
	}
	slices.Sort(local)

	// visit hands one key to fn unless the transaction deleted it since.
	visit := func(k string, remote []byte) error {
		v := remote
		if w, ok := t.writes[k]; ok {
			if w.del {
				return nil
			}
			v = bytes.Clone(w.value)
		}
		return fn([]byte(k[len(bp):]), v)
	}
	from := start
	for {
		opts := append(t.revOpts(), clientv3.WithRange(end), clientv3.WithLimit(scanPage))
		resp, err := t.s.cli.Get(t.ctx, from, opts...)
		if err != nil {
			return fmt.Errorf("etcd store: scan bucket %q: %w", bucket, err)
		}
		if t.rev == 0 {
			t.rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			for len(local) > 0 && local[0] < k {
				if err := visit(local[0], nil); err != nil {
					return stopped(err)
				}
				local = local[1:]
			}
			if len(local) > 0 && local[0] == k {
				local = local[1:]
			}
			if err := visit(k, kv.Value); err != nil {
				return stopped(err)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for _, k := range local {
		if err := visit(k, nil); err != nil {
			return stopped(err)
		}
	}
	return nil
}

func stopped(err error) error {
	if errors.Is(err, store.ErrStop) {
		return nil
	}
	return err
}

// compares guards the commit: nothing fn read may have changed since the
// transaction's revision. Past maxCompares the per-key guards are widened
// to their buckets' version keys (more conflicts, never fewer).
func (t *tx) compares() []clientv3.Cmp {
	if t.rev == 0 {
		return nil // fn read nothing: a blind write cannot conflict
	}
	guard := func(key string) clientv3.Cmp {
		return clientv3.Compare(clientv3.ModRevision(key), "<", t.rev+1)
	}
	buckets := make(map[string]bool, len(t.scanned))
	for b := range t.scanned {
		buckets[b] = true
	}
	var cmps []clientv3.Cmp
	if len(t.reads)+len(buckets) > maxCompares {
		for _, b := range t.reads {
			buckets[b] = true
		}
	} else {
		for k := range t.reads {
			cmps = append(cmps, guard(k))
		}
	}
	for b := range buckets {
		cmps = append(cmps, guard(t.s.versionKey(b)))
	}
	return cmps
}

func (t *tx) ops() []clientv3.Op {
	ops := make([]clientv3.Op, 0, len(t.writes)+len(t.buckets))
	for k, w := range t.writes {
		if w.del {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.value)))
		}
	}
	for b := range t.buckets {
		ops = append(ops, clientv3.OpPut(t.s.versionKey(b), ""))
	}
	return ops
}
