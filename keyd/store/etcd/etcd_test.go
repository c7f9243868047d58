package etcd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/palisade-cc/palisade/keyd/store"
	"github.com/palisade-cc/palisade/keyd/store/etcd/etcdtest"
	"github.com/palisade-cc/palisade/keyd/store/storetest"
)

// One etcd serves the package's tests; every store gets a fresh prefix.
var (
	endpoints []string
	noEtcd    error
	prefixes  atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "keyd-etcd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err := etcdtest.Start(dir)
	if err != nil {
		noEtcd = err
	} else {
		defer srv.Stop()
		endpoints = srv.Endpoints
	}
	return m.Run()
}

func needEtcd(t testing.TB) {
	t.Helper()
	if noEtcd == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("etcd store tests need a real etcd server: %v", noEtcd)
	}
	t.Skipf("SKIP: no real etcd server to test against (CI=true makes this a failure): %v", noEtcd)
}

func openPrefix(t testing.TB, prefix string) *Store {
	t.Helper()
	s, err := Open(context.Background(), endpoints, prefix, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func freshPrefix(t testing.TB) string {
	return "/keyd-test/" + strconv.FormatInt(prefixes.Add(1), 10)
}

func TestConformance(t *testing.T) {
	needEtcd(t)
	// Page every few keys so the suite's scans cross page boundaries.
	defer func(p int64) { scanPage = p }(scanPage)
	scanPage = 3
	storetest.Run(t,
		func(t *testing.T) store.Store { return openPrefix(t, freshPrefix(t)) },
		storetest.Reopen(func(t *testing.T, closed store.Store) store.Store {
			return openPrefix(t, closed.(*Store).prefix)
		}),
		storetest.Replica(func(t *testing.T, open store.Store) store.Store {
			return openPrefix(t, open.(*Store).prefix)
		}),
	)
}

func TestPrefixesAreSeparate(t *testing.T) {
	needEtcd(t)
	// Prefix "/p" must not see the store under "/p/d" nor the reverse.
	a := openPrefix(t, "/sep/p")
	defer a.Close()
	b := openPrefix(t, "/sep/p/d")
	defer b.Close()
	ctx := context.Background()
	if err := b.Update(ctx, func(tx store.Tx) error { return tx.Put("x", []byte("k"), []byte("b")) }); err != nil {
		t.Fatal(err)
	}
	if err := a.View(ctx, func(tx store.Tx) error {
		return tx.Scan("b", nil, func(k, v []byte) error { return fmt.Errorf("store /sep/p sees %q in bucket b", k) })
	}); err != nil {
		t.Error(err)
	}
}

func TestManyReadsWidenToBuckets(t *testing.T) {
	needEtcd(t)
	// More reads than etcd allows compares in one transaction: the
	// commit must still succeed and stay serialisable.
	s := openPrefix(t, freshPrefix(t))
	defer s.Close()
	ctx := context.Background()
	const writers = 8
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			err := s.Update(ctx, func(tx store.Tx) error {
				for i := range 2 * maxCompares { // more than etcd's 128 compares
					if _, err := tx.Get("reads", []byte(strconv.Itoa(i))); err != nil && !errors.Is(err, store.ErrNotFound) {
						return err
					}
				}
				v, err := tx.Get("c", []byte("n"))
				n := 0
				if err == nil {
					n, _ = strconv.Atoi(string(v))
				}
				return tx.Put("c", []byte("n"), []byte(strconv.Itoa(n+1)))
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := s.View(ctx, func(tx store.Tx) error {
		v, err := tx.Get("c", []byte("n"))
		if err != nil {
			return err
		}
		if string(v) != strconv.Itoa(writers) {
			return fmt.Errorf("counter %s after %d increments", v, writers)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

func TestOpenChecks(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, nil, "/p", Options{}); err == nil {
		t.Error("Open with no endpoints succeeded")
	}
	if _, err := Open(ctx, []string{"http://127.0.0.1:1"}, "/", Options{}); err == nil {
		t.Error("Open with an empty prefix succeeded")
	}
}

func BenchmarkUpdateSerial(b *testing.B) {
	needEtcd(b)
	s := openPrefix(b, freshPrefix(b))
	defer s.Close()
	val := make([]byte, 256)
	i := 0
	for b.Loop() {
		i++
		key := []byte(strconv.Itoa(i))
		if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.Put("bench", key, val) }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}

func BenchmarkUpdateParallel(b *testing.B) {
	needEtcd(b)
	s := openPrefix(b, freshPrefix(b))
	defer s.Close()
	val := make([]byte, 256)
	var next atomic.Int64
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := []byte(strconv.FormatInt(next.Add(1), 10))
			if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.Put("bench", key, val) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}
