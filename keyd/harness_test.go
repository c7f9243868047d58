package keyd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/mod/sumdb/note"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
)

const (
	testCluster     = "test-cluster"
	testOrigin      = "keyd.test/test-cluster"
	snpNodeProfile  = "snp-node"
	snpKeydProfile  = "snp-keyd"
	testDiskA       = "0f0e0d0c-0b0a-4908-8706-050403020100"
	testDiskB       = "11111111-2222-4333-8444-555555555555"
	testDiskSwapped = "99999999-8888-4777-8666-555555555555"
)

// harness is one keyd on loopback with an emulated SEV-SNP machine for
// keyd and its nodes (test roots from snptest), a bbolt store, the real
// admission log, an owner key and a master secret.
type harness struct {
	t      testing.TB
	k      *Keyd
	addr   string
	chain  *snptest.Chain
	bundle string
	// peerBundle is the collateral the peers use to verify keyd, apart
	// from keyd's own, so a test can break one side only.
	peerBundle string
	keydRef    *attest.Reference
	nodeRef    *attest.Reference
	owner      ed25519.PrivateKey
	master     []byte
	st         store.Store
	logV       note.Verifier
	verifier   *snp.Verifier
	// peerVerifiers are what peers verify keyd with (keyd's platform).
	peerVerifiers map[attest.Platform]attest.Verifier
	// nodePlats are the platforms of nodes besides SNP, by name.
	nodePlats map[attest.Platform]*platform
	cancel    context.CancelFunc
	done      chan error
}

type harnessOpts struct {
	noInit     bool
	secVersion uint64
	editNode   func(*attest.Reference)
	wrapLog    func(Log) Log
	limits     Limits
	statePath  string
	// store, if set, is keyd's store instead of a new bbolt file.
	store   store.Store
	logSeed []byte
	sealKey []byte
	// kube issues join material; kubeCfg is config.kube (nil: none).
	kube    KubeIssuer
	kubeCfg *KubeConfig
	// keyd is keyd's own platform (nil: SEV-SNP from the harness chain).
	keyd *platform
	// nodes are platforms keyd admits nodes of besides SEV-SNP.
	nodes []*platform
	// meterAttest and meterVerify, if set, sum the CPU time of keyd's own
	// attestation and of its verifications (benchmarks).
	meterAttest, meterVerify *cpuMeter
}

var testChain = func() func(testing.TB) *snptest.Chain {
	return func(t testing.TB) *snptest.Chain {
		t.Helper()
		c, err := snptest.NewChain(snptest.ChainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}()

func testManifest(t testing.TB, version uint64, refs ...RoleReference) *Manifest {
	t.Helper()
	b, err := json.Marshal(Manifest{Format: ManifestFormat, Version: version, References: refs})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testConfig() *Config {
	return &Config{
		Version: ConfigVersion, ClusterID: testCluster, NodeID: "keyd-0", Profile: snpKeydProfile,
		Listen: "127.0.0.1:0", StatePath: "unused", ManifestPath: "unused", ManifestKeys: []string{"unused"}, LogKeyFile: "unused",
		Attester: AttesterConfig{Platform: attest.PlatformSNP},
		Roots:    RootsConfig{SNP: map[string]SNPRoots{"Milan": {VCEKChain: "unused"}}, SNPCollateralDir: "unused"},
	}
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	h := &harness{t: t, chain: testChain(t), bundle: t.TempDir(), peerBundle: t.TempDir()}
	for _, d := range []string{h.bundle, h.peerBundle} {
		if err := h.chain.WriteBundle(d, snptest.BundleOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h.keydRef = h.chain.Reference()
	h.keydRef.Profile = snpKeydProfile
	h.nodeRef = h.chain.Reference()
	h.nodeRef.Profile = snpNodeProfile
	if o.editNode != nil {
		o.editNode(h.nodeRef)
	}
	if o.secVersion == 0 {
		o.secVersion = 1
	}
	if o.statePath == "" {
		o.statePath = filepath.Join(t.TempDir(), "state.db")
	}
	st := o.store
	if st == nil {
		b, err := bbolt.Open(o.statePath, bbolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		st = b
	}
	h.st = st
	if o.logSeed == nil {
		o.logSeed = make([]byte, ed25519.SeedSize)
	}
	signer, vkey, err := auditlog.NewSigner(testOrigin, ed25519.NewKeyFromSeed(o.logSeed))
	if err != nil {
		t.Fatal(err)
	}
	if h.logV, err = note.NewVerifier(vkey); err != nil {
		t.Fatal(err)
	}
	lg, err := auditlog.New(st, testOrigin, signer)
	if err != nil {
		t.Fatal(err)
	}
	var l Log = lg
	if o.wrapLog != nil {
		l = o.wrapLog(l)
	}
	h.verifier = &snp.Verifier{Roots: h.chain.Roots(), Getter: &snp.Collateral{Dir: h.bundle}}
	cfg := testConfig()
	cfg.Limits = o.limits
	var keydAtt attest.Attester = &snp.Attester{Transport: &snptest.Transport{Chain: h.chain}}
	verifiers := map[attest.Platform]attest.Verifier{attest.PlatformSNP: h.verifier}
	if o.keyd != nil {
		keydAtt = o.keyd.attester
		h.keydRef = o.keyd.reference(attest.RoleKeyd)
		h.peerVerifiers = map[attest.Platform]attest.Verifier{o.keyd.name: o.keyd.verifier}
		cfg.Profile = h.keydRef.Profile
		cfg.Attester.Platform = o.keyd.name
	}
	refs := []RoleReference{{attest.RoleNode, h.nodeRef}, {attest.RoleKeyd, h.keydRef}}
	h.nodePlats = map[attest.Platform]*platform{}
	for _, p := range o.nodes {
		verifiers[p.name] = p.verifier
		refs = append(refs, RoleReference{attest.RoleNode, p.reference(attest.RoleNode)})
		h.nodePlats[p.name] = p
	}
	if o.meterAttest != nil {
		keydAtt = meteredAttester{keydAtt, o.meterAttest}
	}
	if o.meterVerify != nil {
		for p, v := range verifiers {
			verifiers[p] = meteredVerifier{v, o.meterVerify}
		}
	}
	cfg.Kube = o.kubeCfg
	h.k, err = New(context.Background(), cfg, Options{
		Store: st, Log: l, References: testManifest(t, o.secVersion, refs...),
		Attester:  keydAtt,
		Verifiers: verifiers,
		SealKey:   o.sealKey,
		Kube:      o.kube,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.start()
	_, h.owner, _ = ed25519.GenerateKey(rand.Reader)
	h.master = make([]byte, api.MasterSecretSize)
	rand.Read(h.master)
	if !o.noInit {
		if err := h.ownerClient().Init(context.Background(), &api.InitRequest{ClusterID: testCluster, MasterSecret: h.master,
			OwnerKey: h.owner.Public().(ed25519.PublicKey), Config: api.ClusterConfig{MeshIPv4: "10.77.0.0/16"}}); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// logVerifier is the note verifier of the harness's log key (seed zero).
func (h *harness) logVerifier(t testing.TB) note.Verifier {
	t.Helper()
	_, vkey, err := auditlog.NewSigner(testOrigin, ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (h *harness) start() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.k.Serve(ctx, ln) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("Serve: %v", err)
	}
	h.cancel = nil
}

// clientConfig is a peer's aTLS side: it verifies keyd against the keyd
// reference; att nil makes it the owner's unattested CLI.
func (h *harness) clientConfig(claims attest.Claims, att attest.Attester) *atls.Config {
	vs := h.peerVerifiers
	if vs == nil { // keyd on SEV-SNP, checked with the peers' own bundle
		vs = map[attest.Platform]attest.Verifier{
			attest.PlatformSNP: &snp.Verifier{Roots: h.chain.Roots(), Getter: &snp.Collateral{Dir: h.peerBundle}}}
	}
	return &atls.Config{
		ClusterID: testCluster, Claims: claims, Attester: att,
		Verifiers: vs,
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Role != attest.RoleKeyd || peer.Profile != h.keydRef.Profile {
				return nil, fmt.Errorf("peer role %q profile %q is not keyd", peer.Role, peer.Profile)
			}
			return h.keydRef, nil
		},
		AcceptPeer: func(peer attest.Claims) error {
			if peer.Role != attest.RoleKeyd {
				return errors.New("not keyd")
			}
			return nil
		},
	}
}

func (h *harness) client(cfg *atls.Config) *api.Client {
	h.t.Helper()
	c, err := api.NewClient(h.addr, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(c.Close)
	return c
}

func (h *harness) ownerClient() *api.Client {
	return h.client(h.clientConfig(attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"}, nil))
}

// node is an emulated SNP node; report, if set, changes what its
// firmware signs.
func (h *harness) node(id string, disks []string, report func(*spb.Report)) *api.Client {
	tr := &snptest.Transport{Chain: h.chain}
	if report != nil {
		tr.Report = func(rd [64]byte) *spb.Report {
			r := h.chain.Report(rd)
			report(r)
			return r
		}
	}
	wg := make([]byte, 32)
	copy(wg, id)
	return h.client(h.clientConfig(attest.Claims{NodeID: id, Role: attest.RoleNode, Profile: snpNodeProfile,
		WireGuardKey: wg, DiskUUIDs: disks, Endpoints: []string{id + ":51820"}}, &snp.Attester{Transport: tr}))
}

func (h *harness) ownerRequest(action, nodeID string, version uint64) *api.OwnerRequest {
	r := &api.OwnerRequest{Action: action, ClusterID: testCluster, NodeID: nodeID, SecurityVersion: version,
		Timestamp: time.Now().Unix(), Nonce: make([]byte, api.OwnerNonceSize)}
	rand.Read(r.Nonce)
	r.Sign(h.owner)
	return r
}

// waitDenials waits for the denial count of c to reach want: keyd counts a
// handshake denial after it told the peer, so the peer may be faster.
func (h *harness) waitDenials(c attest.Class, want float64) float64 {
	deadline := time.Now().Add(2 * time.Second)
	for h.denials(c) < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return h.denials(c)
}

func (h *harness) denials(c attest.Class) float64 {
	return testutil.ToFloat64(h.k.m.admissions.WithLabelValues(resultDenied, string(c)))
}

func (h *harness) admitted() float64 {
	return testutil.ToFloat64(h.k.m.admissions.WithLabelValues(resultAdmitted, ""))
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
