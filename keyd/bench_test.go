package keyd

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var benchLimits = Limits{RatePerSource: 1e9, BurstPerSource: 1 << 30, MaxAdmissions: 4096, MaxHandshakes: 256}

// BenchmarkAdmitSNP is one full admission of a new emulated SEV-SNP node
// on loopback: aTLS handshake with mutual verification, registry and log
// write (bbolt, fsync with group commit), keys and checkpoint. bench/keyd.sh
// sets it next to snp's BenchmarkFloor from the same run.
func BenchmarkAdmitSNP(b *testing.B) {
	h := newHarness(b, harnessOpts{limits: benchLimits})
	ctx := ctxT(b)
	var n atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("bench-%d", n.Add(1))
			c := h.node(id, []string{crashUUID(int(n.Load()))}, nil)
			if _, err := c.Admit(ctx); err != nil {
				b.Error(err)
				return
			}
			c.Close()
		}
	})
}

// BenchmarkStorm admits N emulated SNP nodes as fast as 64 concurrent
// workers can (a boot storm) and reports the admission latency's p50 and
// p99 and the total time. Run with -benchtime 1x.
func BenchmarkStorm(b *testing.B) {
	for _, nodes := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			for b.Loop() {
				storm(b, nodes, 64)
			}
		})
	}
}

func storm(b *testing.B, nodes, workers int) {
	h := newHarness(b, harnessOpts{limits: benchLimits})
	ctx := ctxT(b)
	lat := make([]time.Duration, nodes)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				t0 := time.Now()
				c := h.node(fmt.Sprintf("storm-%05d", i), []string{crashUUID(i)}, nil)
				_, err := c.Admit(ctx)
				c.Close()
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					b.Errorf("node %d: %v", i, err)
				}
			}
		}()
	}
	for i := 0; i < nodes; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	total := time.Since(start)
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(total.Seconds(), "total-s")
	b.ReportMetric(float64(nodes)/total.Seconds(), "admissions/s")
	b.ReportMetric(float64(failed.Load()), "failures")
}
