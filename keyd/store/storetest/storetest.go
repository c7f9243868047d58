// Package storetest is the conformance suite every store.Store backend
// passes: semantics of Get/Put/Delete/Scan, transactions, Watch, durability.
//
// It is a test library, imported only by backends' _test files; it holds
// no backend of its own.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/keyd/store"
)

// Option configures Run.
type Option func(*suite)

// Reopen gives the suite a way to open the same state again: fn is called
// with a store the suite has already closed and must return a new store
// over that store's state. Run requires it (durability is part of the
// contract).
func Reopen(fn func(t *testing.T, closed store.Store) store.Store) Option {
	return func(s *suite) { s.reopen = fn }
}

// Replica gives the suite a second, concurrently open store over the same
// state as an open one (shared backends such as etcd). Without it the
// cross-replica subtests do not run: an embedded backend has no replicas.
func Replica(fn func(t *testing.T, open store.Store) store.Store) Option {
	return func(s *suite) { s.replica = fn }
}

// Settle is how long the suite waits before asserting that a watch
// channel received nothing, or nothing more (default 300 ms). Backends
// that notify asynchronously (etcd) need it; it is never a speed bound.
func Settle(d time.Duration) Option {
	return func(s *suite) { s.settle = d }
}

type suite struct {
	open    func(t *testing.T) store.Store
	reopen  func(t *testing.T, closed store.Store) store.Store
	replica func(t *testing.T, open store.Store) store.Store
	settle  time.Duration
}

// waitLong bounds every wait for something that must happen; only a broken
// backend reaches it.
const waitLong = 10 * time.Second

// Run runs the conformance suite. open must return a store over fresh,
// empty state each time it is called; the suite closes what it opens.
func Run(t *testing.T, open func(t *testing.T) store.Store, opts ...Option) {
	s := &suite{open: open, settle: 300 * time.Millisecond}
	for _, o := range opts {
		o(s)
	}
	if s.reopen == nil {
		t.Fatal("storetest.Run needs the Reopen option: durability across Close is part of the store contract")
	}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"GetPutDelete", s.testGetPutDelete},
		{"ValuesAreCopies", s.testValuesAreCopies},
		{"BucketsAreSeparate", s.testBucketsAreSeparate},
		{"BadNames", s.testBadNames},
		{"ScanOrderAndPrefix", s.testScanOrderAndPrefix},
		{"ScanStop", s.testScanStop},
		{"ScanSeesOwnWrites", s.testScanSeesOwnWrites},
		{"ScanWhileWriting", s.testScanWhileWriting},
		{"ReadOnlyView", s.testReadOnlyView},
		{"Rollback", s.testRollback},
		{"RollbackAmongConcurrent", s.testRollbackAmongConcurrent},
		{"Serialisable", s.testSerialisable},
		{"SerialisableScan", s.testSerialisableScan},
		{"SnapshotView", s.testSnapshotView},
		{"CanceledContext", s.testCanceledContext},
		{"WatchAfterCommit", s.testWatchAfterCommit},
		{"WatchNotOnRollback", s.testWatchNotOnRollback},
		{"WatchOtherBucket", s.testWatchOtherBucket},
		{"WatchCoalesces", s.testWatchCoalesces},
		{"WatchClosedByContext", s.testWatchClosedByContext},
		{"Durable", s.testDurable},
		{"LargeValue", s.testLargeValue},
	}
	if s.replica != nil {
		tests = append(tests, []struct {
			name string
			fn   func(t *testing.T)
		}{
			{"ReplicaSerialisable", s.testReplicaSerialisable},
			{"ReplicaWatch", s.testReplicaWatch},
		}...)
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

func (s *suite) fresh(t *testing.T) store.Store {
	t.Helper()
	st := s.open(t)
	t.Cleanup(func() { st.Close() })
	return st
}

func update(t *testing.T, st store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := st.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t *testing.T, st store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := st.View(context.Background(), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

type kv struct{ K, V string }

func scanAll(t *testing.T, st store.Store, bucket, prefix string) []kv {
	t.Helper()
	var got []kv
	view(t, st, func(tx store.Tx) error {
		got = nil
		return tx.Scan(bucket, []byte(prefix), func(k, v []byte) error {
			got = append(got, kv{string(k), string(v)})
			return nil
		})
	})
	return got
}

func get(t *testing.T, st store.Store, bucket, key string) (string, error) {
	t.Helper()
	var v []byte
	err := st.View(context.Background(), func(tx store.Tx) error {
		var err error
		v, err = tx.Get(bucket, []byte(key))
		return err
	})
	return string(v), err
}

func (s *suite) testGetPutDelete(t *testing.T) {
	st := s.fresh(t)
	if _, err := get(t, st, "b", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get in missing bucket: err = %v, want ErrNotFound", err)
	}
	update(t, st, func(tx store.Tx) error {
		if err := tx.Put("b", []byte("k"), []byte("v1")); err != nil {
			return err
		}
		if err := tx.Put("b", []byte("empty"), []byte{}); err != nil {
			return err
		}
		// Read-your-writes inside the transaction.
		v, err := tx.Get("b", []byte("k"))
		if err != nil || string(v) != "v1" {
			return fmt.Errorf("Get after Put in same tx = %q, %v", v, err)
		}
		return nil
	})
	if v, err := get(t, st, "b", "k"); err != nil || v != "v1" {
		t.Fatalf("Get = %q, %v; want v1", v, err)
	}
	if v, err := get(t, st, "b", "empty"); err != nil || v != "" {
		t.Fatalf("Get empty value = %q, %v; want empty, nil", v, err)
	}
	if _, err := get(t, st, "b", "other"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing key: err = %v, want ErrNotFound", err)
	}
	update(t, st, func(tx store.Tx) error { return tx.Put("b", []byte("k"), []byte("v2")) })
	if v, _ := get(t, st, "b", "k"); v != "v2" {
		t.Fatalf("Get after overwrite = %q, want v2", v)
	}
	update(t, st, func(tx store.Tx) error {
		if err := tx.Delete("b", []byte("k")); err != nil {
			return err
		}
		if _, err := tx.Get("b", []byte("k")); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("Get after Delete in same tx: err = %v, want ErrNotFound", err)
		}
		if err := tx.Delete("b", []byte("never")); err != nil {
			return fmt.Errorf("Delete of missing key: %w", err)
		}
		return tx.Delete("nobucket", []byte("k"))
	})
	if _, err := get(t, st, "b", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after Delete: err = %v, want ErrNotFound", err)
	}
}

func (s *suite) testValuesAreCopies(t *testing.T) {
	st := s.fresh(t)
	key, val := []byte("k"), []byte("value")
	update(t, st, func(tx store.Tx) error {
		if err := tx.Put("b", key, val); err != nil {
			return err
		}
		// The caller may reuse its buffers once Put returned.
		key[0], val[0] = 'X', 'X'
		return nil
	})
	var got []byte
	view(t, st, func(tx store.Tx) error {
		var err error
		got, err = tx.Get("b", []byte("k"))
		return err
	})
	if string(got) != "value" {
		t.Fatalf("stored value = %q, want %q (Put must copy its arguments)", got, "value")
	}
	// A value handed out stays valid and private after the transaction.
	got[0] = 'Y'
	if v, _ := get(t, st, "b", "k"); v != "value" {
		t.Fatalf("value after caller modified a returned slice = %q", v)
	}
}

func (s *suite) testBucketsAreSeparate(t *testing.T) {
	st := s.fresh(t)
	// Names chosen to collide under naive "bucket/key" or "bucket%key"
	// encodings.
	writes := []struct{ bucket, key, val string }{
		{"a", "b/c", "1"},
		{"a/b", "c", "2"},
		{"a%2Fb", "c", "3"},
		{"a", "%2Fb/c", "4"},
		{"a/", "b/c", "5"},
		{"ab", "c", "6"},
		{"a", "\x00", "7"},
	}
	update(t, st, func(tx store.Tx) error {
		for _, w := range writes {
			if err := tx.Put(w.bucket, []byte(w.key), []byte(w.val)); err != nil {
				return err
			}
		}
		return nil
	})
	for _, w := range writes {
		if v, err := get(t, st, w.bucket, w.key); err != nil || v != w.val {
			t.Errorf("bucket %q key %q = %q, %v; want %q", w.bucket, w.key, v, err, w.val)
		}
	}
	want := []kv{{"\x00", "7"}, {"%2Fb/c", "4"}, {"b/c", "1"}}
	if diff := cmp.Diff(want, scanAll(t, st, "a", "")); diff != "" {
		t.Errorf("Scan(a) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]kv{{"c", "2"}}, scanAll(t, st, "a/b", "")); diff != "" {
		t.Errorf("Scan(a/b) (-want +got):\n%s", diff)
	}
}

func (s *suite) testBadNames(t *testing.T) {
	st := s.fresh(t)
	err := st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Put("", []byte("k"), []byte("v"))
	})
	if err == nil {
		t.Error("Put into bucket \"\" succeeded, want an error")
	}
	err = st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Put("b", []byte{}, []byte("v"))
	})
	if err == nil {
		t.Error("Put of an empty key succeeded, want an error")
	}
}

func (s *suite) testScanOrderAndPrefix(t *testing.T) {
	st := s.fresh(t)
	keys := []string{"", "a", "ab", "abc", "abd", "b", "\x00", "\x00\x01", "\xff", "\xff\xff", "\xfe\xff", "a\xff", "a\x00"}
	keys = keys[1:] // the empty key is not a key
	shuffled := slices.Clone(keys)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, k := range shuffled { // one transaction each: order must not depend on insertion
		update(t, st, func(tx store.Tx) error { return tx.Put("s", []byte(k), []byte("v"+k)) })
	}
	update(t, st, func(tx store.Tx) error { return tx.Put("s2", []byte("a"), []byte("other bucket")) })
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	for _, prefix := range []string{"", "a", "ab", "abc", "\x00", "\xff", "\xfe", "c", "abcd"} {
		var want []kv
		for _, k := range sorted {
			if bytes.HasPrefix([]byte(k), []byte(prefix)) {
				want = append(want, kv{k, "v" + k})
			}
		}
		if diff := cmp.Diff(want, scanAll(t, st, "s", prefix)); diff != "" {
			t.Errorf("Scan(prefix %q) (-want +got):\n%s", prefix, diff)
		}
	}
	if got := scanAll(t, st, "missing", ""); len(got) != 0 {
		t.Errorf("Scan(missing bucket) = %v, want nothing", got)
	}
}

func (s *suite) testScanStop(t *testing.T) {
	st := s.fresh(t)
	update(t, st, func(tx store.Tx) error {
		for i := range 10 {
			if err := tx.Put("b", fmt.Appendf(nil, "k%02d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	var n int
	view(t, st, func(tx store.Tx) error {
		n = 0
		err := tx.Scan("b", nil, func(k, v []byte) error {
			n++
			if n == 3 {
				return store.ErrStop
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("Scan stopped with ErrStop returned %v, want nil", err)
		}
		return nil
	})
	if n != 3 {
		t.Errorf("Scan called fn %d times after ErrStop at 3", n)
	}
	boom := errors.New("boom")
	err := st.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan("b", nil, func(k, v []byte) error { return fmt.Errorf("wrapped: %w", boom) })
	})
	if !errors.Is(err, boom) {
		t.Errorf("Scan returned %v, want the callback's error", err)
	}
}

func (s *suite) testScanSeesOwnWrites(t *testing.T) {
	st := s.fresh(t)
	update(t, st, func(tx store.Tx) error {
		for _, k := range []string{"k1", "k3", "k5", "k7"} {
			if err := tx.Put("b", []byte(k), []byte("old")); err != nil {
				return err
			}
		}
		return nil
	})
	var got []kv
	update(t, st, func(tx store.Tx) error {
		for _, op := range []struct{ k, v string }{{"k0", "new"}, {"k3", "new"}, {"k4", "new"}, {"k9", "new"}, {"j", "new"}} {
			if err := tx.Put("b", []byte(op.k), []byte(op.v)); err != nil {
				return err
			}
		}
		if err := tx.Delete("b", []byte("k5")); err != nil {
			return err
		}
		if err := tx.Delete("b", []byte("k4")); err != nil { // put then deleted
			return err
		}
		got = nil
		return tx.Scan("b", []byte("k"), func(k, v []byte) error {
			got = append(got, kv{string(k), string(v)})
			return nil
		})
	})
	want := []kv{{"k0", "new"}, {"k1", "old"}, {"k3", "new"}, {"k7", "old"}, {"k9", "new"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Scan inside Update (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, scanAll(t, st, "b", "k")); diff != "" {
		t.Errorf("Scan after commit (-want +got):\n%s", diff)
	}
}

func (s *suite) testScanWhileWriting(t *testing.T) {
	st := s.fresh(t)
	// Up to three writes per visited key in one Update: etcd's default
	// --max-txn-ops (128) bounds n. Backends with paged scans should page below n in tests.
	const n = 50
	update(t, st, func(tx store.Tx) error {
		for i := range n {
			if err := tx.Put("b", fmt.Appendf(nil, "k%04d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	var visited, want []string
	for i := 0; i < n; i += 2 {
		want = append(want, fmt.Sprintf("k%04d", i))
	}
	update(t, st, func(tx store.Tx) error {
		visited = nil
		return tx.Scan("b", []byte("k"), func(k, v []byte) error {
			visited = append(visited, string(k))
			// Delete this key and the next: the scan must not visit a key
			// deleted ahead of it.
			var i int
			if _, err := fmt.Sscanf(string(k), "k%04d", &i); err != nil {
				return err
			}
			if err := tx.Delete("b", k); err != nil {
				return err
			}
			if err := tx.Delete("b", fmt.Appendf(nil, "k%04d", i+1)); err != nil {
				return err
			}
			// A key written outside the prefix must not disturb the scan.
			return tx.Put("b", append([]byte("z"), k...), v)
		})
	})
	if diff := cmp.Diff(want, visited); diff != "" {
		t.Errorf("Scan deleting as it goes visited (-want +got):\n%s", diff)
	}
	if got := scanAll(t, st, "b", "k"); len(got) != 0 {
		t.Errorf("%d keys left after deleting all during Scan", len(got))
	}
	if got := scanAll(t, st, "b", "z"); len(got) != n/2 {
		t.Errorf("%d keys written during Scan, want %d", len(got), n/2)
	}
}

func (s *suite) testReadOnlyView(t *testing.T) {
	st := s.fresh(t)
	update(t, st, func(tx store.Tx) error { return tx.Put("b", []byte("k"), []byte("v")) })
	view(t, st, func(tx store.Tx) error {
		if err := tx.Put("b", []byte("k"), []byte("x")); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Put in View: err = %v, want ErrReadOnly", err)
		}
		if err := tx.Put("new", []byte("k"), []byte("x")); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Put to new bucket in View: err = %v, want ErrReadOnly", err)
		}
		if err := tx.Delete("b", []byte("k")); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Delete in View: err = %v, want ErrReadOnly", err)
		}
		return nil
	})
	if v, _ := get(t, st, "b", "k"); v != "v" {
		t.Errorf("value after writes in View = %q, want v", v)
	}
}

func (s *suite) testRollback(t *testing.T) {
	st := s.fresh(t)
	update(t, st, func(tx store.Tx) error { return tx.Put("b", []byte("keep"), []byte("1")) })
	boom := errors.New("boom")
	err := st.Update(context.Background(), func(tx store.Tx) error {
		for _, op := range []error{
			tx.Put("b", []byte("keep"), []byte("changed")),
			tx.Put("b", []byte("new"), []byte("x")),
			tx.Put("fresh-bucket", []byte("k"), []byte("x")),
			tx.Delete("b", []byte("keep")),
		} {
			if op != nil {
				return op
			}
		}
		return fmt.Errorf("fail after writing: %w", boom)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	if diff := cmp.Diff([]kv{{"keep", "1"}}, scanAll(t, st, "b", "")); diff != "" {
		t.Errorf("bucket b after rollback (-want +got):\n%s", diff)
	}
	if got := scanAll(t, st, "fresh-bucket", ""); len(got) != 0 {
		t.Errorf("bucket created by a rolled-back Update holds %v", got)
	}
}

func (s *suite) testRollbackAmongConcurrent(t *testing.T) {
	// Group-committing backends batch concurrent Updates: a failing one
	// must not take the others down, nor leave its writes in the batch.
	st := s.fresh(t)
	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = st.Update(context.Background(), func(tx store.Tx) error {
				if err := tx.Put("b", []byte("k"+strconv.Itoa(i)), []byte("v")); err != nil {
					return err
				}
				if err := tx.Put("shared", []byte("last"), []byte(strconv.Itoa(i))); err != nil {
					return err
				}
				if i%2 == 1 {
					return fmt.Errorf("odd %d", i)
				}
				return nil
			})
		})
	}
	wg.Wait()
	var want []kv
	for i := range n {
		if i%2 == 1 {
			if errs[i] == nil || errs[i].Error() != fmt.Sprintf("odd %d", i) {
				t.Errorf("Update %d returned %v, want its own error", i, errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Errorf("Update %d returned %v", i, errs[i])
		}
		want = append(want, kv{"k" + strconv.Itoa(i), "v"})
	}
	slices.SortFunc(want, func(a, b kv) int { return bytes.Compare([]byte(a.K), []byte(b.K)) })
	if diff := cmp.Diff(want, scanAll(t, st, "b", "")); diff != "" {
		t.Errorf("committed keys (-want +got):\n%s", diff)
	}
	last, err := get(t, st, "shared", "last")
	if err != nil {
		t.Fatal(err)
	}
	if i, _ := strconv.Atoi(last); i%2 == 1 {
		t.Errorf("shared/last = %s, written by a rolled-back Update", last)
	}
}

func increment(tx store.Tx, bucket, key string) error {
	v, err := tx.Get(bucket, []byte(key))
	n := 0
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return err
	default:
		if n, err = strconv.Atoi(string(v)); err != nil {
			return fmt.Errorf("counter %q: %w", v, err)
		}
	}
	return tx.Put(bucket, []byte(key), []byte(strconv.Itoa(n+1)))
}

func counter(t *testing.T, st store.Store, bucket, key string) int {
	t.Helper()
	v, err := get(t, st, bucket, key)
	if err != nil {
		t.Fatalf("read counter: %v", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("counter %q: %v", v, err)
	}
	return n
}

func (s *suite) testSerialisable(t *testing.T) {
	st := s.fresh(t)
	const n = 32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if err := st.Update(context.Background(), func(tx store.Tx) error {
				return increment(tx, "c", "n")
			}); err != nil {
				t.Errorf("increment: %v", err)
			}
		})
	}
	wg.Wait()
	if got := counter(t, st, "c", "n"); got != n {
		t.Errorf("counter after %d concurrent increments = %d", n, got)
	}
}

// claimSlot puts key into bucket only if the bucket is empty: without
// phantom protection on Scan two of them both see it empty.
func claimSlot(tx store.Tx, bucket, key string) error {
	empty := true
	if err := tx.Scan(bucket, nil, func(k, v []byte) error {
		empty = false
		return store.ErrStop
	}); err != nil {
		return err
	}
	if !empty {
		return nil
	}
	return tx.Put(bucket, []byte(key), []byte("claimed"))
}

func (s *suite) testSerialisableScan(t *testing.T) {
	st := s.fresh(t)
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := st.Update(context.Background(), func(tx store.Tx) error {
				return claimSlot(tx, "slot", "claimer"+strconv.Itoa(i))
			}); err != nil {
				t.Errorf("claim: %v", err)
			}
		})
	}
	wg.Wait()
	if got := scanAll(t, st, "slot", ""); len(got) != 1 {
		t.Errorf("%d claimers saw an empty bucket, want exactly 1: %v", len(got), got)
	}
}

func (s *suite) testSnapshotView(t *testing.T) {
	// x and y are always written together; a View must never see them
	// differ.
	st := s.fresh(t)
	update(t, st, func(tx store.Tx) error {
		if err := tx.Put("p", []byte("x"), []byte("0")); err != nil {
			return err
		}
		return tx.Put("p", []byte("y"), []byte("0"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; ctx.Err() == nil; i++ {
			v := []byte(strconv.Itoa(i))
			if err := st.Update(ctx, func(tx store.Tx) error {
				if err := tx.Put("p", []byte("x"), v); err != nil {
					return err
				}
				return tx.Put("p", []byte("y"), v)
			}); err != nil && ctx.Err() == nil {
				t.Errorf("writer: %v", err)
			}
		}
	})
	for range 100 {
		view(t, st, func(tx store.Tx) error {
			x, err := tx.Get("p", []byte("x"))
			if err != nil {
				return err
			}
			var ys []kv
			if err := tx.Scan("p", []byte("y"), func(k, v []byte) error {
				ys = append(ys, kv{string(k), string(v)})
				return nil
			}); err != nil {
				return err
			}
			if len(ys) != 1 || ys[0].V != string(x) {
				return fmt.Errorf("View saw x=%s y=%v: not one snapshot", x, ys)
			}
			return nil
		})
	}
	cancel()
	wg.Wait()
}

func (s *suite) testCanceledContext(t *testing.T) {
	st := s.fresh(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := st.Update(ctx, func(tx store.Tx) error {
		ran = true
		return tx.Put("b", []byte("k"), []byte("v"))
	}); !errors.Is(err, context.Canceled) {
		t.Errorf("Update with canceled ctx returned %v", err)
	}
	if ran {
		t.Error("Update ran fn with a canceled ctx")
	}
	if err := st.View(ctx, func(tx store.Tx) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("View with canceled ctx returned %v", err)
	}
	if _, err := get(t, st, "b", "k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("write of canceled Update is visible: %v", err)
	}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: watch channel closed", what)
		}
	case <-time.After(waitLong):
		t.Fatalf("%s: no notification within %v", what, waitLong)
	}
}

// quiet asserts that ch receives nothing within the settle time.
func (s *suite) quiet(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Errorf("%s: unexpected notification", what)
	case <-time.After(s.settle):
	}
}

func (s *suite) testWatchAfterCommit(t *testing.T) {
	st := s.fresh(t)
	ch := st.Watch(t.Context(), "w")
	for i := range 3 {
		update(t, st, func(tx store.Tx) error { return tx.Put("w", []byte("k"), []byte{byte(i)}) })
		waitFor(t, ch, fmt.Sprintf("Put %d", i))
		// The notification follows the commit: a View now sees it.
		if v, err := get(t, st, "w", "k"); err != nil || v != string([]byte{byte(i)}) {
			t.Fatalf("after notification Get = %q, %v", v, err)
		}
	}
	update(t, st, func(tx store.Tx) error { return tx.Delete("w", []byte("k")) })
	waitFor(t, ch, "Delete")
}

func (s *suite) testWatchNotOnRollback(t *testing.T) {
	st := s.fresh(t)
	ch := st.Watch(t.Context(), "w")
	err := st.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Put("w", []byte("k"), []byte("v")); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	if err == nil {
		t.Fatal("failing Update returned nil")
	}
	s.quiet(t, ch, "after rolled-back Update")
	// Reads and writes to no bucket at all notify nobody either.
	update(t, st, func(tx store.Tx) error {
		_, err := tx.Get("w", []byte("k"))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	s.quiet(t, ch, "after read-only Update")
}

func (s *suite) testWatchOtherBucket(t *testing.T) {
	st := s.fresh(t)
	ch := st.Watch(t.Context(), "w")
	other := st.Watch(t.Context(), "w/x")
	update(t, st, func(tx store.Tx) error { return tx.Put("w/x", []byte("k"), []byte("v")) })
	waitFor(t, other, "write to w/x")
	s.quiet(t, ch, "watch on w after write to w/x")
}

func (s *suite) testWatchCoalesces(t *testing.T) {
	st := s.fresh(t)
	ch := st.Watch(t.Context(), "w")
	const n = 20
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			if err := st.Update(context.Background(), func(tx store.Tx) error {
				return tx.Put("w", []byte("k"), []byte{byte(i)})
			}); err != nil {
				t.Errorf("Update %d: %v", i, err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatal("Updates blocked on a watcher that does not read")
	}
	// Let asynchronous backends deliver everything, then exactly one value
	// is pending and nothing more arrives.
	time.Sleep(s.settle)
	waitFor(t, ch, "after many Updates")
	s.quiet(t, ch, "second value after coalesced notifications")
	update(t, st, func(tx store.Tx) error { return tx.Put("w", []byte("k"), []byte("again")) })
	waitFor(t, ch, "Update after draining")
}

func (s *suite) testWatchClosedByContext(t *testing.T) {
	st := s.fresh(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := st.Watch(ctx, "w")
	cancel()
	deadline := time.After(waitLong)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				// Writes after the close do not panic on a closed channel.
				update(t, st, func(tx store.Tx) error { return tx.Put("w", []byte("k"), []byte("v")) })
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after ctx was canceled")
		}
	}
}

func (s *suite) testDurable(t *testing.T) {
	st := s.open(t)
	update(t, st, func(tx store.Tx) error {
		for i := range 50 {
			if err := tx.Put("d", fmt.Appendf(nil, "k%02d", i), fmt.Appendf(nil, "v%d", i)); err != nil {
				return err
			}
		}
		return nil
	})
	update(t, st, func(tx store.Tx) error { return tx.Delete("d", []byte("k07")) })
	err := st.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Put("d", []byte("k00"), []byte("rolled back")); err != nil {
			return err
		}
		return errors.New("no")
	})
	if err == nil {
		t.Fatal("failing Update returned nil")
	}
	want := scanAll(t, st, "d", "")
	if len(want) != 49 {
		t.Fatalf("%d keys before Close, want 49", len(want))
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st2 := s.reopen(t, st)
	t.Cleanup(func() { st2.Close() })
	if diff := cmp.Diff(want, scanAll(t, st2, "d", "")); diff != "" {
		t.Errorf("state after reopen (-before +after):\n%s", diff)
	}
	update(t, st2, func(tx store.Tx) error { return increment(tx, "d", "counter") })
	if got := counter(t, st2, "d", "counter"); got != 1 {
		t.Errorf("counter after reopen = %d", got)
	}
}

func (s *suite) testLargeValue(t *testing.T) {
	st := s.fresh(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16) // 64 KiB
	update(t, st, func(tx store.Tx) error { return tx.Put("big", []byte("k"), big) })
	v, err := get(t, st, "big", "k")
	if err != nil || v != string(big) {
		t.Errorf("64 KiB value round trip: %d bytes, %v", len(v), err)
	}
}

func (s *suite) testReplicaSerialisable(t *testing.T) {
	a := s.fresh(t)
	b := s.replica(t, a)
	t.Cleanup(func() { b.Close() })
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		st := a
		if i%2 == 1 {
			st = b
		}
		wg.Go(func() {
			if err := st.Update(context.Background(), func(tx store.Tx) error {
				if err := claimSlot(tx, "slot", "r"+strconv.Itoa(i)); err != nil {
					return err
				}
				return increment(tx, "c", "n")
			}); err != nil {
				t.Errorf("replica Update: %v", err)
			}
		})
	}
	wg.Wait()
	if got := counter(t, a, "c", "n"); got != n {
		t.Errorf("counter after %d increments on two replicas = %d", n, got)
	}
	if got := scanAll(t, b, "slot", ""); len(got) != 1 {
		t.Errorf("%d claimers on two replicas saw an empty bucket: %v", len(got), got)
	}
}

func (s *suite) testReplicaWatch(t *testing.T) {
	a := s.fresh(t)
	b := s.replica(t, a)
	t.Cleanup(func() { b.Close() })
	ch := a.Watch(t.Context(), "w")
	update(t, b, func(tx store.Tx) error { return tx.Put("w", []byte("k"), []byte("from b")) })
	waitFor(t, ch, "write by the other replica")
	if v, err := get(t, a, "w", "k"); err != nil || v != "from b" {
		t.Errorf("replica a reads %q, %v after b's write", v, err)
	}
}
