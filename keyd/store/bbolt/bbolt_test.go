package bbolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/keyd/store"
	"github.com/palisade-cc/palisade/keyd/store/storetest"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "keyd.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t,
		func(t *testing.T) store.Store { return openTemp(t) },
		storetest.Reopen(func(t *testing.T, closed store.Store) store.Store {
			t.Helper()
			s, err := Open(closed.(*Store).path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}),
		// Notifications are sent before Update returns: no need to wait
		// long to see that none arrived.
		storetest.Settle(20*time.Millisecond),
	)
}

func TestUpdatePanicIsRaisedInCallerAndUndone(t *testing.T) {
	s := openTemp(t)
	defer s.Close()
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want the panic of fn", v)
			}
		}()
		s.Update(context.Background(), func(tx store.Tx) error {
			if err := tx.Put("b", []byte("k"), []byte("v")); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	// The store still works and the panicking write is gone.
	if err := s.Update(context.Background(), func(tx store.Tx) error {
		if _, err := tx.Get("b", []byte("k")); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("write of panicking Update visible: %v", err)
		}
		return tx.Put("b", []byte("k2"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
}

func TestClosed(t *testing.T) {
	s := openTemp(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(store.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Update after Close: %v", err)
	}
	if err := s.View(context.Background(), func(store.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("View after Close: %v", err)
	}
	if _, ok := <-s.Watch(context.Background(), "b"); ok {
		t.Error("Watch after Close returned an open channel")
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

func TestCloseClosesWatches(t *testing.T) {
	s := openTemp(t)
	ch := s.Watch(context.Background(), "b")
	s.Close()
	if _, ok := <-ch; ok {
		t.Error("watch channel open after Close")
	}
}

func TestGroupCommitBatches(t *testing.T) {
	// Many concurrent writers must share transactions.
	s := openTemp(t)
	defer s.Close()
	before := s.Commits()
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := s.Update(context.Background(), func(tx store.Tx) error {
				return tx.Put("b", []byte(strconv.Itoa(i)), []byte("v"))
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	commits := s.Commits() - before
	t.Logf("%d Updates in %d transactions", n, commits)
	if commits >= n {
		t.Errorf("%d concurrent Updates took %d transactions: no group commit", n, commits)
	}
}

func BenchmarkUpdateSerial(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "keyd.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	val := make([]byte, 256)
	i := 0
	for b.Loop() {
		i++
		key := []byte(strconv.Itoa(i))
		if err := s.Update(context.Background(), func(tx store.Tx) error {
			return tx.Put("bench", key, val)
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}

func BenchmarkUpdateParallel(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "keyd.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	val := make([]byte, 256)
	var mu sync.Mutex
	next := 0
	// 64 concurrent writers regardless of GOMAXPROCS: a boot storm is
	// many admissions waiting on I/O, not on CPUs.
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			next++
			key := []byte(strconv.Itoa(next))
			mu.Unlock()
			if err := s.Update(context.Background(), func(tx store.Tx) error {
				return tx.Put("bench", key, val)
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}
