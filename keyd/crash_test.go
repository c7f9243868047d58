package keyd

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
)

const crashDirEnv = "PALISADE_KEYD_CRASH_DIR"

// TestCrashChild is the keyd process of TestCrashDuringStorm: it serves on
// the state in $PALISADE_KEYD_CRASH_DIR until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("child process of TestCrashDuringStorm only")
	}
	h := newHarness(t, harnessOpts{noInit: true, statePath: filepath.Join(dir, "state.db"),
		sealKey: bytes.Repeat([]byte{0x5e}, 32), limits: Limits{RatePerSource: 1e6, BurstPerSource: 1e6, MaxAdmissions: 1024}})
	fmt.Printf("ADDR %s\n", h.addr)
	select {} // until SIGKILL
}

// TestCrashDuringStorm kills keyd with SIGKILL while 1000 emulated SNP
// nodes are admitted, restarts it on the same state, and checks that every
// admission a node saw acknowledged is in the registry and the log, that
// disk keys are unchanged, and that the log's consistency proof from the
// last checkpoint seen before the crash verifies.
func TestCrashDuringStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: a few seconds")
	}
	const nodes, killAfter, workers = 1000, 400, 32
	dir := t.TempDir()
	h := &harness{t: t, chain: testChain(t), peerBundle: t.TempDir()}
	if err := h.chain.WriteBundle(h.peerBundle, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	h.keydRef = h.chain.Reference()
	h.keydRef.Profile = snpKeydProfile
	_, h.owner, _ = ed25519.GenerateKey(rand.Reader)
	h.master = make([]byte, api.MasterSecretSize)
	rand.Read(h.master)

	var addr atomic.Value
	child := startCrashChild(t, dir)
	addr.Store(child.addr)
	h.addr = child.addr
	ctx := ctxT(t)
	if err := h.ownerClient().Init(ctx, &api.InitRequest{ClusterID: testCluster, MasterSecret: h.master,
		OwnerKey: h.owner.Public().(ed25519.PublicKey)}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	acked := map[string]*api.AdmitResponse{}
	var preCrash []byte // the newest checkpoint a node saw before the kill
	var preCrashSize int64
	killed := make(chan struct{})
	var killOnce sync.Once
	jobs := make(chan int)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				id := fmt.Sprintf("node-%04d", i)
				for attempt := 0; ; attempt++ {
					hh := *h
					hh.addr = addr.Load().(string)
					resp, err := hh.node(id, []string{crashUUID(i)}, nil).Admit(ctx)
					if err == nil {
						mu.Lock()
						acked[id] = resp
						select {
						case <-killed:
						default:
							cp, err := auditlog.VerifyCheckpoint(resp.Checkpoint, testOrigin, h.logVerifier(t))
							if err == nil && cp.Size > preCrashSize {
								preCrash, preCrashSize = resp.Checkpoint, cp.Size
							}
						}
						n := len(acked)
						mu.Unlock()
						if n == killAfter {
							killOnce.Do(func() {
								_ = child.cmd.Process.Signal(syscall.SIGKILL)
								_ = child.cmd.Wait()
								close(killed)
								c2 := startCrashChild(t, dir)
								addr.Store(c2.addr)
							})
						}
						break
					}
					if ctx.Err() != nil || attempt > 200 {
						failures.Add(1)
						t.Errorf("%s: %v", id, err)
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	for i := 0; i < nodes; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if failures.Load() > 0 || len(acked) != nodes {
		t.Fatalf("%d nodes acknowledged, %d failed", len(acked), failures.Load())
	}
	select {
	case <-killed:
	default:
		t.Fatal("keyd was never killed")
	}

	h.addr = addr.Load().(string)
	oc := h.ownerClient()
	reg, err := oc.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inReg := map[string]bool{}
	for _, n := range reg.Nodes {
		inReg[n.NodeID] = true
	}
	cp2raw, err := oc.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cp2, err := auditlog.VerifyCheckpoint(cp2raw, testOrigin, h.logVerifier(t))
	if err != nil {
		t.Fatal(err)
	}
	for id, resp := range acked {
		if !inReg[id] {
			t.Errorf("%s: acknowledged (log index %d) but not in the registry", id, resp.LogIndex)
		}
		es, err := oc.Entries(ctx, resp.LogIndex, resp.LogIndex+1)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := auditlog.ParseRecord(es.Entries[0])
		if err != nil || rec.Type != auditlog.TypeAdmission || rec.Node != id {
			t.Errorf("%s: log entry %d is %+v (%v)", id, resp.LogIndex, rec, err)
		}
		want, _ := DiskKey(h.master, testCluster, id, resp.DiskKeys[0].UUID)
		if !bytes.Equal(resp.DiskKeys[0].Key, want) {
			t.Errorf("%s: disk key is not the derived one", id)
		}
	}
	// Keys are unchanged after the restart: re-admit a sample of nodes
	// acknowledged before the crash.
	for i := 0; i < nodes; i += 50 {
		id := fmt.Sprintf("node-%04d", i)
		resp, err := h.node(id, []string{crashUUID(i)}, nil).Admit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(resp.DiskKeys[0].Key, acked[id].DiskKeys[0].Key) {
			t.Errorf("%s: disk key changed across the crash", id)
		}
	}
	cp1, err := auditlog.VerifyCheckpoint(preCrash, testOrigin, h.logVerifier(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := oc.ConsistencyProof(ctx, uint64(cp1.Size), uint64(cp2.Size))
	if err != nil {
		t.Fatal(err)
	}
	proof := make(tlog.TreeProof, len(p.Hashes))
	for i, b := range p.Hashes {
		copy(proof[i][:], b)
	}
	if err := auditlog.VerifyConsistency(cp1, cp2, proof); err != nil {
		t.Errorf("consistency %d → %d: %v", cp1.Size, cp2.Size, err)
	}
	t.Logf("killed after %d acknowledgements; pre-crash checkpoint size %d, final %d", killAfter, cp1.Size, cp2.Size)
}

func crashUUID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

type crashChild struct {
	cmd  *exec.Cmd
	addr string
}

func startCrashChild(t *testing.T, dir string) *crashChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	// TMPDIR under the parent's own temporary directory: the child dies by
	// SIGKILL, so its t.TempDir cleanups never run; the parent's remove it.
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, "TMPDIR="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			go func() { _, _ = bufio.NewReader(out).WriteTo(discard{}) }()
			return &crashChild{cmd: cmd, addr: a}
		}
	}
	t.Fatal("keyd child exited without an address")
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
