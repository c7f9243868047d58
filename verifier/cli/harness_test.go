package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/keyd"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
	"github.com/palisade-cc/palisade/verifier/config"
)

const (
	testCluster = "test-cluster"
	testOrigin  = "palisade-keyd/test-cluster"
	nodeProfile = "snp-node"
	keydProfile = "snp-keyd"
)

// world is a keyd on loopback attesting on an emulated SEV-SNP machine,
// emulated SNP nodes that join it and answer aTLS on 127.0.0.N, and the
// owner's configuration directory pinned to the test roots.
type world struct {
	t       *testing.T
	chain   *snptest.Chain
	bundle  string
	dir     string
	refs    []byte
	logKey  string
	keyd    map[string]string // name → address
	port    int
	nodeIPs int
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ch, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, chain: ch, bundle: t.TempDir(), dir: t.TempDir(), keyd: map[string]string{}}
	if err := ch.WriteBundle(w.bundle, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	kr, nr := ch.Reference(), ch.Reference()
	kr.Profile, nr.Profile = keydProfile, nodeProfile
	w.refs, _ = json.Marshal(config.References{Format: 1, SecurityVersion: 1, References: []config.RoleReference{
		{Role: attest.RoleKeyd, Reference: kr}, {Role: attest.RoleNode, Reference: nr}}})
	_, w.logKey, err = auditlog.NewSigner(testOrigin, ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	var chainPEM bytes.Buffer
	pem.Encode(&chainPEM, &pem.Block{Type: "CERTIFICATE", Bytes: ch.ASK.Raw})
	pem.Encode(&chainPEM, &pem.Block{Type: "CERTIFICATE", Bytes: ch.ARK.Raw})
	write(t, filepath.Join(w.dir, "ask-ark.pem"), chainPEM.Bytes())
	write(t, filepath.Join(w.dir, "references.json"), w.refs)
	// One port for every node's attestation endpoint, on its own loopback
	// address (the production rule: endpoint host, configured port).
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	w.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return w
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeConfig writes verifier.json pointing at keyd addr.
func (w *world) writeConfig(addr string) {
	w.t.Helper()
	c := config.Config{Version: config.Version, ClusterID: testCluster, Keyd: []string{addr},
		References: "references.json", LogKey: w.logKey, OwnerKey: "owner.key", Secret: "owner-secret.json",
		AttestPort: w.port, Roots: config.Roots{SNP: map[string]config.SNPRoots{"Milan": {VCEKChain: "ask-ark.pem"}},
			SNPCollateralDir: w.bundle}}
	b, _ := json.MarshalIndent(c, "", "  ")
	write(w.t, filepath.Join(w.dir, config.FileName), b)
}

// startKeyd starts a keyd named name with its own state; the log key is
// the same for all (seed zero), so two keyds are two histories signed by
// one key: a fork.
func (w *world) startKeyd(name string) string {
	t := w.t
	t.Helper()
	st, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	signer, _, err := auditlog.NewSigner(testOrigin, ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	lg, err := auditlog.New(st, testOrigin, signer)
	if err != nil {
		t.Fatal(err)
	}
	r, err := config.ParseReferences(w.refs)
	if err != nil {
		t.Fatal(err)
	}
	refs := keydRefs{r}
	cfg := &keyd.Config{Version: keyd.ConfigVersion, ClusterID: testCluster, NodeID: name, Profile: keydProfile,
		Listen: "127.0.0.1:0", StatePath: "unused", ManifestPath: "unused", ManifestKeys: []string{"unused"}, LogKeyFile: "unused",
		Attester: keyd.AttesterConfig{Platform: attest.PlatformSNP},
		Roots:    keyd.RootsConfig{SNP: map[string]keyd.SNPRoots{"Milan": {VCEKChain: "unused"}}, SNPCollateralDir: "unused"}}
	k, err := keyd.New(context.Background(), cfg, keyd.Options{Store: st, Log: lg, References: refs,
		Attester:  &snp.Attester{Transport: &snptest.Transport{Chain: w.chain}},
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: w.snpVerifier()}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("keyd Serve: %v", err)
		}
	})
	w.keyd[name] = ln.Addr().String()
	return ln.Addr().String()
}

func (w *world) snpVerifier() *snp.Verifier {
	return &snp.Verifier{Roots: w.chain.Roots(), Getter: &snp.Collateral{Dir: w.bundle}}
}

// node is an emulated SNP node: it joins keyd and answers aTLS on its own
// loopback address. Setting measurement changes what its firmware signs
// from then on.
type node struct {
	id          string
	claims      attest.Claims
	att         *snp.Attester
	measurement atomic.Pointer[[]byte]
}

func (w *world) newNode(id string) *node {
	w.t.Helper()
	w.nodeIPs++
	ip := fmt.Sprintf("127.0.0.%d", w.nodeIPs+1)
	n := &node{id: id}
	wg := make([]byte, 32)
	copy(wg, id)
	n.claims = attest.Claims{NodeID: id, Role: attest.RoleNode, Profile: nodeProfile, WireGuardKey: wg,
		Endpoints: []string{ip + ":51820"}}
	n.att = &snp.Attester{Transport: &snptest.Transport{Chain: w.chain, Report: func(rd [64]byte) *spb.Report {
		r := w.chain.Report(rd)
		if m := n.measurement.Load(); m != nil {
			r.Measurement = *m
		}
		return r
	}}}
	inner, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(w.port)))
	if err != nil {
		w.t.Fatal(err)
	}
	ln, err := atls.NewListener(inner, &atls.Config{ClusterID: testCluster, Claims: n.claims, Attester: n.att,
		AllowUnattestedPeer: true}, atls.ListenerOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	w.t.Cleanup(func() { ln.Close() })
	return n
}

// join admits n at the keyd at addr.
func (w *world) join(n *node, addr string) {
	w.t.Helper()
	cfg := &atls.Config{ClusterID: testCluster, Claims: n.claims, Attester: n.att,
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: w.snpVerifier()},
		Reference: func(_ context.Context, p attest.Claims) (*attest.Reference, error) {
			r, _ := config.ParseReferences(w.refs)
			return r.Lookup(p.Role, p.Profile)
		}}
	cl, err := api.NewClient(addr, cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Admit(ctxT(w.t)); err != nil {
		w.t.Fatalf("admit %s: %v", n.id, err)
	}
}

// run runs the verifier and returns its exit code, stdout and stderr.
func (w *world) run(e Env, args ...string) (int, string, string) {
	w.t.Helper()
	var out, errb bytes.Buffer
	e.Stdout, e.Stderr, e.ConfigDir = &out, &errb, w.dir
	code := Run(ctxT(w.t), args, e)
	return code, out.String(), errb.String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// honest is an initialised cluster with nodes a and b joined.
func (w *world) honest() (addr string, nodes []*node) {
	w.t.Helper()
	addr = w.startKeyd("keyd-0")
	w.writeConfig(addr)
	if code, out, errs := w.run(Env{}, "init", addr); code != 0 {
		w.t.Fatalf("init: exit %d\n%s%s", code, out, errs)
	}
	for _, id := range []string{"node-a", "node-b"} {
		n := w.newNode(id)
		w.join(n, addr)
		nodes = append(nodes, n)
	}
	return addr, nodes
}

// keydRefs hands keyd the same reference file the owner pins.
type keydRefs struct{ r *config.References }

func (k keydRefs) Lookup(role attest.Role, profile string) (*attest.Reference, error) {
	return k.r.Lookup(role, profile)
}
func (k keydRefs) SecurityVersion() uint64 { return k.r.SecurityVersion }

// initDirect initialises the keyd at addr with a fresh secret, not through
// the CLI (whose files already exist).
func (w *world) initDirect(addr string) {
	w.t.Helper()
	c, err := config.Load(w.dir)
	if err != nil {
		w.t.Fatal(err)
	}
	cfg, err := atlsConfig(c, acceptKeyd)
	if err != nil {
		w.t.Fatal(err)
	}
	cl, err := api.NewClient(addr, cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	defer cl.Close()
	pub, _, _ := ed25519.GenerateKey(nil)
	if err := cl.Init(ctxT(w.t), &api.InitRequest{ClusterID: testCluster, MasterSecret: make([]byte, 32), OwnerKey: pub}); err != nil {
		w.t.Fatal(err)
	}
}
