package keyd

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
)

// The keyd benchmarks run keyd in the benchmark process and the emulated
// nodes in a child process (TestBenchNodes), so keyd's CPU time is this
// process's getrusage and the nodes' attestation and verification of keyd
// (the same crypto again) is not counted against keyd. keyd attests itself
// on an emulated SEV-SNP machine; the firmware's report signature, which
// real hardware computes on the AMD secure processor, is measured apart
// (thread CPU time around keyd's Attest calls) and reported separately.

var benchLimits = Limits{RatePerSource: 1e9, BurstPerSource: 1 << 30, MaxAdmissions: 4096, MaxHandshakes: 256}

const (
	benchNodesEnv     = "PALISADE_KEYD_BENCH_NODES"
	benchPlatformEnv  = "PALISADE_KEYD_BENCH_PLATFORM"
	benchWorkersEnv   = "KEYD_BENCH_WORKERS"
	stormRateEnv      = "KEYD_STORM_RATE"
	defaultBenchNodes = 16
)

// defaultStormRates: 1,000 nodes arriving over 20 s and over 10 s.
var defaultStormRates = []float64{50, 100}

// BenchmarkAdmitSNP, BenchmarkAdmitTDX and BenchmarkAdmitTPM admit b.N new
// emulated nodes of that platform (a fresh aTLS handshake each, mutual
// verification, registry and log write with fsync, keys and checkpoint)
// from 16 concurrent workers in the node process. Besides wall ns/op they
// report keyd's CPU per admission, split into the verification of the
// node, the emulated firmware signature and the rest (keyd's own
// overhead). bench/keyd.sh sets them next to each platform's
// BenchmarkFloor from the same run. Use -benchtime Nx (each call starts a
// node process).
func BenchmarkAdmitSNP(b *testing.B) { benchAdmit(b, attest.PlatformSNP) }
func BenchmarkAdmitTDX(b *testing.B) { benchAdmit(b, attest.PlatformTDX) }
func BenchmarkAdmitTPM(b *testing.B) { benchAdmit(b, attest.PlatformTPM) }

func benchAdmit(b *testing.B, p attest.Platform) {
	bk := newBenchKeyd(b, p)
	bk.run(b, 0, min(20, b.N), defaultBenchNodes, 0) // warm: caches, connections, first batch
	b.ResetTimer()
	r := bk.measure(b, 1000, b.N, benchWorkers(), 0)
	b.StopTimer()
	r.report(b)
}

// BenchmarkStorm admits N new emulated SNP nodes as fast as the node
// process's workers can (a closed loop: KEYD_BENCH_WORKERS, default 16,
// each starting the next node when its last one is admitted) and reports
// the total time, failures, the admission latency's p50 and p99, and the
// CPU per admission of keyd and of the node process. It answers "how long
// do N nodes take"; its latencies are those of a saturated keyd with 16
// nodes queued, not of a storm at a given rate (BenchmarkStormOpen). Run
// with -benchtime 1x.
func BenchmarkStorm(b *testing.B) {
	for _, nodes := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			for b.Loop() {
				bk := newBenchKeyd(b, attest.PlatformSNP)
				bk.measure(b, 0, nodes, benchWorkers(), 0).report(b)
			}
		})
	}
}

// BenchmarkStormOpen is the 1,000-node SEV-SNP boot storm as an open loop:
// node i starts its join at i/rate seconds whether or not earlier nodes
// are done, and its latency is its completion minus that scheduled start,
// so time spent queued behind a slow keyd counts (no coordinated
// omission). A node that keyd turns away ("retry later") is a failure
// here, not retried. Rates: KEYD_STORM_RATE, nodes per second, a comma
// list (default 50 and 100: 1,000 nodes in 20 s and in 10 s). Run with
// -benchtime 1x.
func BenchmarkStormOpen(b *testing.B) {
	for _, rate := range stormRates(b) {
		b.Run(fmt.Sprintf("nodes=1000/rate=%g", rate), func(b *testing.B) {
			for b.Loop() {
				bk := newBenchKeyd(b, attest.PlatformSNP)
				bk.measure(b, 0, 1000, -1, rate).report(b)
			}
		})
	}
}

func benchWorkers() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(benchWorkersEnv), &n); err != nil || n <= 0 {
		return defaultBenchNodes
	}
	return n
}

func stormRates(b *testing.B) []float64 {
	env := os.Getenv(stormRateEnv)
	if env == "" {
		return defaultStormRates
	}
	var rates []float64
	for f := range strings.SplitSeq(env, ",") {
		var r float64
		if _, err := fmt.Sscan(f, &r); err != nil || r <= 0 {
			b.Fatalf("%s=%q: %q is not a positive rate", stormRateEnv, env, f)
		}
		rates = append(rates, r)
	}
	return rates
}

// benchKeyd is keyd under benchmark with its node process.
type benchKeyd struct {
	h     *harness
	nodes *nodeProcess
	fw    *cpuMeter // keyd's emulated firmware
	ver   *cpuMeter // keyd's verification of nodes
}

func newBenchKeyd(b *testing.B, p attest.Platform) *benchKeyd {
	b.Helper()
	tuneRuntime() // as Run does
	np := startNodeProcess(b, p)
	bk := &benchKeyd{nodes: np, fw: &cpuMeter{}, ver: &cpuMeter{}}
	o := harnessOpts{limits: benchLimits, meterAttest: bk.fw, meterVerify: bk.ver}
	if np.plat != nil {
		o.nodes = []*platform{np.plat}
	}
	bk.h = newHarness(b, o)
	return bk
}

type benchResult struct {
	nodeResult
	wall                     time.Duration
	cpu, fw, verify, runtime time.Duration
	commits                  int64
	n                        int
}

// measure runs n admissions (closed loop with workers, or open loop at
// rate per second if rate > 0) and keyd's CPU time while they ran.
func (bk *benchKeyd) measure(b *testing.B, start, n, workers int, rate float64) benchResult {
	b.Helper()
	runtime.GC()
	c0, f0, v0, k0 := selfCPU(), bk.fw.total(), bk.ver.total(), bk.commits()
	t0 := time.Now()
	r := bk.run(b, start, n, workers, rate)
	return benchResult{nodeResult: r, wall: time.Since(t0), cpu: selfCPU() - c0,
		fw: bk.fw.total() - f0, verify: bk.ver.total() - v0, commits: bk.commits() - k0, n: n}
}

// commits counts keyd's store transactions (each one fsync).
func (bk *benchKeyd) commits() int64 {
	if s, ok := bk.h.st.(*bbolt.Store); ok {
		return s.Commits()
	}
	return 0
}

func (bk *benchKeyd) run(b *testing.B, start, n, workers int, rate float64) nodeResult {
	b.Helper()
	r, err := bk.nodes.run(bk.h.addr, start, n, workers, rate)
	if err != nil {
		b.Fatal(err)
	}
	if r.Failed > 0 {
		b.Errorf("%d of %d admissions failed, first: %s", r.Failed, n, r.FirstError)
	}
	return r
}

func (r benchResult) report(b *testing.B) {
	per := func(d time.Duration) float64 { return float64(d) / float64(r.n) / 1e6 }
	own := r.cpu - r.fw
	b.ReportMetric(per(r.cpu), "keyd-cpu-ms/op")
	b.ReportMetric(per(r.fw), "emulated-fw-ms/op")
	b.ReportMetric(per(r.verify), "verify-cpu-ms/op")
	b.ReportMetric(per(own-r.verify), "keyd-overhead-ms/op")
	b.ReportMetric(float64(r.n)/own.Seconds(), "admissions/s/keyd-core")
	b.ReportMetric(float64(r.n)/r.wall.Seconds(), "admissions/s")
	b.ReportMetric(r.P50, "p50-ms")
	b.ReportMetric(r.P99, "p99-ms")
	b.ReportMetric(r.wall.Seconds(), "total-s")
	b.ReportMetric(float64(r.Failed), "failures")
	// The emulated nodes share the machine's cores with keyd: their CPU
	// per admission (attestation with the emulated firmware's signature,
	// verification of keyd, TLS) says how much of the wall time is theirs.
	b.ReportMetric(r.NodeCPUMs/float64(r.n), "node-cpu-ms/op")
	b.ReportMetric(loadAvg(), "load-1m")
	if r.commits > 0 {
		b.ReportMetric(float64(r.n)/float64(r.commits), "admissions/commit")
	}
}

// loadAvg is the machine's one-minute load average (0 if unknown): the
// machine is shared, and every number is reported with it.
func loadAvg() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	if _, err := fmt.Sscan(string(raw), &l); err != nil {
		return 0
	}
	return l
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// threadCPU is the calling OS thread's CPU time: CLOCK_THREAD_CPUTIME_ID,
// which is exact; getrusage(RUSAGE_THREAD) is tick-sampled and misses most
// of a call that lasts a millisecond.
func threadCPU() time.Duration {
	var ts syscall.Timespec
	const clockThreadCPUTimeID = 3
	if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0
	}
	return time.Duration(ts.Nano())
}

// cpuMeter sums the CPU time of calls: the goroutine is locked to its
// thread for the call, so the thread's CPU time is the call's.
type cpuMeter struct{ ns atomic.Int64 }

func (m *cpuMeter) total() time.Duration { return time.Duration(m.ns.Load()) }

func (m *cpuMeter) measure(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t := threadCPU()
	f()
	m.ns.Add(int64(threadCPU() - t))
}

type meteredAttester struct {
	attest.Attester
	m *cpuMeter
}

func (a meteredAttester) Attest(ctx context.Context, chal []byte, bd attest.Binding) (ev *attest.Evidence, err error) {
	a.m.measure(func() { ev, err = a.Attester.Attest(ctx, chal, bd) })
	return ev, err
}

type meteredVerifier struct {
	attest.Verifier
	m *cpuMeter
}

func (v meteredVerifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (out *attest.Verified, err error) {
	v.m.measure(func() { out, err = v.Verifier.Verify(ctx, ev, in) })
	return out, err
}

func (v meteredVerifier) Challenge(id []byte) (send, keep []byte, err error) {
	v.m.measure(func() { send, keep, err = v.Verifier.Challenge(id) })
	return send, keep, err
}

// nodeProcess is the child running the emulated nodes; plat is what keyd
// needs to verify them (nil: SEV-SNP nodes of the harness chain, whose
// fixed test keys both processes share).
type nodeProcess struct {
	cmd  *exec.Cmd
	in   io.Writer
	out  *bufio.Scanner
	plat *platform
}

type nodeResult struct {
	OK, Failed int
	FirstError string
	P50, P99   float64 // ms
	NodeCPUMs  float64 // the node process's CPU time over the run
}

func startNodeProcess(b *testing.B, p attest.Platform) *nodeProcess {
	b.Helper()
	dir := b.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchNodes$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), benchNodesEnv+"="+dir, benchPlatformEnv+"="+string(p))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	np := &nodeProcess{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	np.out.Buffer(nil, 1<<20)
	if line := np.line(); line != "READY" {
		b.Fatalf("node process: %q, want READY", line)
	}
	switch p {
	case attest.PlatformTDX:
		np.plat = &platform{name: p, verifier: &tdx.Verifier{Roots: readPool(b, filepath.Join(dir, "root.pem")),
			Getter: &tdx.Bundle{FS: os.DirFS(filepath.Join(dir, "bundle"))}, Now: func() time.Time { return tdxtest.Epoch }}}
	case attest.PlatformTPM:
		np.plat = &platform{name: p, verifier: tpm.NewVerifier(readPool(b, filepath.Join(dir, "root.pem")), readPool(b, filepath.Join(dir, "intermediate.pem")))}
	}
	if np.plat != nil {
		np.plat.ref = &attest.Reference{}
		raw, err := os.ReadFile(filepath.Join(dir, "reference.json"))
		if err == nil {
			err = json.Unmarshal(raw, np.plat.ref)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return np
}

func (np *nodeProcess) line() string {
	if !np.out.Scan() {
		return "EOF"
	}
	return np.out.Text()
}

func (np *nodeProcess) run(addr string, start, n, workers int, rate float64) (nodeResult, error) {
	var r nodeResult
	if _, err := fmt.Fprintf(np.in, "RUN %s %d %d %d %g\n", addr, start, n, workers, rate); err != nil {
		return r, err
	}
	line, ok := strings.CutPrefix(np.line(), "RESULT ")
	if !ok {
		return r, fmt.Errorf("node process: %q", line)
	}
	return r, json.Unmarshal([]byte(line), &r)
}

func readPool(b *testing.B, path string) *x509.CertPool {
	b.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		b.Fatalf("%s: no certificates", path)
	}
	return pool
}

func writePEM(t testing.TB, path string, c *x509.Certificate) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBenchNodes is the node process of the keyd benchmarks: it publishes
// what keyd needs to verify its platform (roots, collateral, reference)
// into $PALISADE_KEYD_BENCH_NODES, prints READY, then runs each
// "RUN addr start count workers rate" line from stdin: count admissions of
// new nodes start…, with workers concurrent (rate 0) or arriving at rate
// per second (rate > 0), answering "RESULT {json}".
func TestBenchNodes(t *testing.T) {
	dir := os.Getenv(benchNodesEnv)
	if dir == "" {
		t.Skip("child process of the keyd benchmarks only")
	}
	h := &harness{t: t, chain: testChain(t), peerBundle: t.TempDir()}
	if err := h.chain.WriteBundle(h.peerBundle, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	h.keydRef = h.chain.Reference()
	h.keydRef.Profile = snpKeydProfile
	var p *platform
	switch attest.Platform(os.Getenv(benchPlatformEnv)) {
	case attest.PlatformTDX:
		p = tdxPlatform(t)
		f, err := tdxtest.Shared()
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, filepath.Join(dir, "root.pem"), f.PKI.Root)
		if err := os.Mkdir(filepath.Join(dir, "bundle"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := tdxtest.WriteDir(filepath.Join(dir, "bundle"), f.Bundle); err != nil {
			t.Fatal(err)
		}
	case attest.PlatformTPM:
		sim := tpmtest.Start(t, tpmtest.Config{})
		a, err := tpm.NewAttester(sim.RW, tpm.Options{EventLogPath: sim.LogPath})
		if err != nil {
			t.Fatal(err)
		}
		p = &platform{name: attest.PlatformTPM, attester: a, ref: sim.Reference("tpm")}
		writePEM(t, filepath.Join(dir, "root.pem"), sim.CA.Root)
		writePEM(t, filepath.Join(dir, "intermediate.pem"), sim.CA.Intermediate)
	}
	if p != nil {
		raw, err := json.Marshal(p.ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "reference.json"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("READY")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var addr string
		var start, n, workers int
		var rate float64
		if _, err := fmt.Sscanf(sc.Text(), "RUN %s %d %d %d %g", &addr, &start, &n, &workers, &rate); err != nil {
			t.Fatalf("command %q: %v", sc.Text(), err)
		}
		h.addr = addr
		c0 := selfCPU()
		var r nodeResult
		if rate > 0 {
			r = h.admitOpen(p, start, n, rate)
		} else {
			r = h.admitMany(p, start, n, workers)
		}
		r.NodeCPUMs = float64(selfCPU()-c0) / 1e6
		raw, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", raw)
	}
}

// admitMany admits nodes start…start+n-1 (on p, or SEV-SNP if nil) with
// workers concurrent, each a new client and so a new aTLS handshake. A
// latency is one node's join, from its start to its answer.
func (h *harness) admitMany(p *platform, start, n, workers int) nodeResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tally := newTally(n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				t0 := time.Now()
				err := h.admitOne(ctx, p, start+i)
				tally.add(i, time.Since(t0), start+i, err)
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return tally.result()
}

// admitOpen admits nodes start…start+n-1 arriving at rate per second: node
// i is due at i/rate s after the first, is started then however many are
// still in flight, and its latency runs from when it was due, so a late
// start (this process or the machine too busy to start it on time) counts
// against keyd's answer, not in its favour.
func (h *harness) admitOpen(p *platform, start, n int, rate float64) nodeResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tally := newTally(n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		due := t0.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		time.Sleep(time.Until(due))
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := h.admitOne(ctx, p, start+i)
			tally.add(i, time.Since(due), start+i, err)
		}()
	}
	wg.Wait()
	return tally.result()
}

// admitOne joins node number i: a new client, so a new aTLS handshake.
func (h *harness) admitOne(ctx context.Context, p *platform, i int) error {
	c, err := h.benchNode(fmt.Sprintf("node-%06d", i), []string{crashUUID(i)}, p)
	if err != nil {
		return err
	}
	defer c.HTTP.CloseIdleConnections()
	_, err = c.Admit(ctx)
	return err
}

// tally collects the latencies and outcomes of a run.
type tally struct {
	mu  sync.Mutex
	lat []time.Duration
	r   nodeResult
}

func newTally(n int) *tally { return &tally{lat: make([]time.Duration, n)} }

func (t *tally) add(slot int, d time.Duration, node int, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lat[slot] = d
	if err != nil {
		if t.r.Failed++; t.r.FirstError == "" {
			t.r.FirstError = fmt.Sprintf("node-%06d: %v", node, err)
		}
		return
	}
	t.r.OK++
}

func (t *tally) result() nodeResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	lat := slices.Clone(t.lat)
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	r := t.r
	if n := len(lat); n > 0 {
		r.P50, r.P99 = ms(lat[n/2]), ms(lat[n*99/100])
	}
	return r
}

// benchNode is a node client without the test's cleanup list (a storm
// makes 10,000 of them).
func (h *harness) benchNode(id string, disks []string, p *platform) (*api.Client, error) {
	wg := make([]byte, 32)
	copy(wg, id)
	claims := attest.Claims{NodeID: id, Role: attest.RoleNode, Profile: snpNodeProfile,
		WireGuardKey: wg, DiskUUIDs: disks, Endpoints: []string{id + ":51820"}}
	var att attest.Attester
	if p != nil {
		claims.Profile, att = profileOf(p.name, attest.RoleNode), p.attester
	} else {
		att = &snp.Attester{Transport: &snptest.Transport{Chain: h.chain}}
	}
	return api.NewClient(h.addr, h.clientConfig(claims, att))
}
