package attestd

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/roots"
	"github.com/palisade-cc/palisade/keyd"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
)

const (
	testCluster  = "test-cluster"
	keydProfile  = "snp-keyd"
	nodeProfile  = "snp-node"
	tpmProfile   = "tpm-node"
	testNodeID   = "4c4c4544-0042-3510-8052-b3c04f4d3232"
	testDiskUUID = "0f0e0d0c-0b0a-4908-8706-050403020100"
)

// fixedChain is the SEV-SNP test chain of go-sev-guest's published keys;
// otherChain has fresh keys, so nothing it signs chains to fixedChain's ARK.
var (
	chainOnce              sync.Once
	fixedChain, otherChain *snptest.Chain
	chainErr               error
)

func chains(t testing.TB) (*snptest.Chain, *snptest.Chain) {
	t.Helper()
	chainOnce.Do(func() {
		if fixedChain, chainErr = snptest.NewChain(snptest.ChainOptions{}); chainErr != nil {
			return
		}
		var k *snptest.Keys
		if k, chainErr = snptest.GenerateKeys(2048); chainErr != nil {
			return
		}
		otherChain, chainErr = snptest.NewChain(snptest.ChainOptions{Keys: k})
	})
	if chainErr != nil {
		t.Fatal(chainErr)
	}
	return fixedChain, otherChain
}

// countingAttester counts the evidence it produced, to prove none went to
// a keyd that did not verify.
type countingAttester struct {
	attest.Attester
	n atomic.Int32
}

func (c *countingAttester) Attest(ctx context.Context, ch []byte, b attest.Binding) (*attest.Evidence, error) {
	c.n.Add(1)
	return c.Attester.Attest(ctx, ch, b)
}

// world is one keyd on loopback (SEV-SNP, test roots) and the files a
// node's attestd reads: pinned roots, manifest key, hints.
type world struct {
	t        testing.TB
	dir      string
	keyd     *keyd.Keyd
	addr     string
	chain    *snptest.Chain // the node's SNP hardware and pinned roots
	signKey  ed25519.PrivateKey
	keydRef  *attest.Reference
	nodeRef  *attest.Reference
	owner    ed25519.PrivateKey
	master   []byte // the cluster master secret keyd was initialised with
	cfg      Config
	console  bytes.Buffer
	extraPEM map[string][]byte
	// status is the provisioner's status endpoint the hints name.
	status *statusSink
}

type worldOpts struct {
	// keydChain is keyd's own SNP hardware (nil: the node's chain).
	keydChain *snptest.Chain
	// served, if set, edits the manifest keyd serves; keyd itself admits
	// against the unedited one.
	served func(*manifest.Manifest)
	// admitting, if set, edits the manifest keyd admits against; keyd
	// serves the unedited one.
	admitting func(*manifest.Manifest)
	// servedKey signs the served manifest instead of the pinned key.
	servedKey ed25519.PrivateKey
	// nodeRefs are added to the manifest's node references.
	nodeRefs []attest.Reference
	// tpmRoots and tpmIntermediates are pinned besides SNP (PEM).
	tpmRoots, tpmIntermediates []*x509.Certificate
	// verifiers are keyd's extra node verifiers.
	verifiers map[attest.Platform]attest.Verifier
	// hints before keyd's own address.
	hintsBefore []string
	noInit      bool
	// kube is keyd's join-material issuer (nil: none).
	kube keyd.KubeIssuer
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	chain, _ := chains(t)
	w := &world{t: t, dir: t.TempDir(), chain: chain}
	w.signKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	kc := o.keydChain
	if kc == nil {
		kc = chain
	}
	bundle := filepath.Join(w.dir, "snp-bundle")
	keydBundle := filepath.Join(w.dir, "keyd-snp-bundle")
	must(t, chain.WriteBundle(bundle, snptest.BundleOptions{}))
	must(t, chain.WriteBundle(keydBundle, snptest.BundleOptions{}))

	w.keydRef = kc.Reference()
	w.keydRef.Profile = keydProfile
	w.nodeRef = chain.Reference()
	w.nodeRef.Profile = nodeProfile
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "0.1.0", SecurityVersion: 1,
		Files:      map[string]attest.HexBytes{"palisade.efi": bytes.Repeat([]byte{0xef}, 32)},
		References: append([]attest.Reference{*w.nodeRef}, o.nodeRefs...), Keyd: []attest.Reference{*w.keydRef}}
	admitBundle := signBundle(t, m, w.signKey)
	served := admitBundle
	if o.admitting != nil {
		m2 := *m
		m2.References = append([]attest.Reference(nil), m.References...)
		o.admitting(&m2)
		admitBundle = signBundle(t, &m2, w.signKey)
	}
	if o.served != nil || o.servedKey != nil {
		m2 := *m
		m2.References = append([]attest.Reference(nil), m.References...)
		if o.served != nil {
			o.served(&m2)
		}
		k := w.signKey
		if o.servedKey != nil {
			k = o.servedKey
		}
		served = signBundle(t, &m2, k)
	}
	manPath := filepath.Join(w.dir, "manifest.bundle.json")
	must(t, os.WriteFile(manPath, served, 0o600))

	// keyd, as keyd.Run would build it, with test hardware and roots.
	st, err := bbolt.Open(filepath.Join(w.dir, "keyd.db"), bbolt.Options{})
	must(t, err)
	t.Cleanup(func() { st.Close() })
	signer, _, err := auditlog.NewSigner("keyd.test/"+testCluster, ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))
	must(t, err)
	lg, err := auditlog.New(st, "keyd.test/"+testCluster, signer)
	must(t, err)
	refs, err := keyd.ParseSignedManifest(admitBundle, keyd.ManifestOptions{Keys: []crypto.PublicKey{w.signKey.Public()},
		AllowNoLogProof: true, Logger: slog.New(slog.DiscardHandler)})
	must(t, err)
	verifiers := map[attest.Platform]attest.Verifier{
		attest.PlatformSNP: &snp.Verifier{Roots: chain.Roots(), Getter: &snp.Collateral{Dir: keydBundle}}}
	for p, v := range o.verifiers {
		verifiers[p] = v
	}
	kcfg := &keyd.Config{Version: keyd.ConfigVersion, ClusterID: testCluster, NodeID: "keyd-0", Profile: keydProfile,
		Listen: "127.0.0.1:0", StatePath: "unused", ManifestPath: manPath, ManifestKeys: []string{"unused"}, LogKeyFile: "unused",
		Attester: keyd.AttesterConfig{Platform: attest.PlatformSNP},
		Roots:    keyd.RootsConfig{SNP: map[string]keyd.SNPRoots{"Milan": {VCEKChain: "unused"}}, SNPCollateralDir: "unused"}}
	w.keyd, err = keyd.New(context.Background(), kcfg, keyd.Options{Store: st, Log: lg, References: refs,
		Attester: &snp.Attester{Transport: &snptest.Transport{Chain: kc}}, Verifiers: verifiers, Kube: o.kube})
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	w.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.keyd.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("keyd Serve: %v", err)
		}
	})
	if !o.noInit {
		_, w.owner, _ = ed25519.GenerateKey(rand.Reader)
		w.master = make([]byte, api.MasterSecretSize)
		rand.Read(w.master)
		must(t, w.ownerClient(kc).Init(context.Background(), &api.InitRequest{ClusterID: testCluster, MasterSecret: w.master,
			OwnerKey: w.owner.Public().(ed25519.PublicKey)}))
	}

	// The node's pinned files.
	rc := roots.Config{SNP: map[string]roots.SNP{"Milan": {VCEKChain: "snp-bundle/kdsintf.amd.com/vcek/v1/Milan/cert_chain"}},
		SNPCollateralDir: "snp-bundle"}
	if len(o.tpmRoots) > 0 {
		must(t, os.WriteFile(filepath.Join(w.dir, "tpm-roots.pem"), pemCerts(o.tpmRoots), 0o600))
		must(t, os.WriteFile(filepath.Join(w.dir, "tpm-int.pem"), pemCerts(o.tpmIntermediates), 0o600))
		rc.TPMRoots, rc.TPMIntermediates = "tpm-roots.pem", "tpm-int.pem"
	}
	rb, err := json.Marshal(rc)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(w.dir, "roots.json"), rb, 0o600))
	der, err := x509.MarshalPKIXPublicKey(w.signKey.Public())
	must(t, err)
	must(t, os.WriteFile(filepath.Join(w.dir, "manifest-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600))
	w.status = newStatusSink(t)
	w.writeHints(append(o.hintsBefore, w.addr), w.status.url)
	w.cfg = Config{RootsPath: filepath.Join(w.dir, "roots.json"), ManifestKeyPath: filepath.Join(w.dir, "manifest-key.pem"),
		HintsPath: filepath.Join(w.dir, "hints.json"), RunDir: filepath.Join(w.dir, "run"), ManifestWithoutLogProof: true,
		Deadline: 20 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, AttemptTimeout: 10 * time.Second}
	return w
}

// writeHints writes the hints file as the init would; status "" leaves the
// status hint out.
func (w *world) writeHints(keyd []string, status string) {
	w.t.Helper()
	h := map[string]any{"keyd": keyd, "cluster": testCluster}
	if status != "" {
		h["status"] = status
	}
	hb, err := json.Marshal(h)
	must(w.t, err)
	must(w.t, os.WriteFile(filepath.Join(w.dir, "hints.json"), hb, 0o600))
}

// ownerClient is the owner's CLI: no evidence, but it verifies keyd.
func (w *world) ownerClient(kc *snptest.Chain) *api.Client {
	w.t.Helper()
	dir := w.t.TempDir()
	must(w.t, kc.WriteBundle(dir, snptest.BundleOptions{}))
	ref := w.keydRef
	c, err := api.NewClient(w.addr, &atls.Config{ClusterID: testCluster,
		Claims:    attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"},
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: &snp.Verifier{Roots: kc.Roots(), Getter: &snp.Collateral{Dir: dir}}},
		Reference: func(context.Context, attest.Claims) (*attest.Reference, error) { return ref, nil }})
	must(w.t, err)
	w.t.Cleanup(c.Close)
	return c
}

// snpNode is the node's machine: SEV-SNP on the world's chain.
func (w *world) snpNode() (*Machine, *countingAttester) {
	m := snpMachine(&snptest.Transport{Chain: w.chain}, "test SEV-SNP", nil)
	ca := &countingAttester{Attester: m.Attester}
	m.Attester = ca
	return m, ca
}

func (w *world) run(m *Machine, disks []string) (*Admission, error) {
	deps := Deps{
		Detect:  func(context.Context, *Config, *slog.Logger) (*Machine, error) { return m, nil },
		NodeID:  func() (string, error) { return testNodeID, nil },
		Console: &w.console,
	}
	if disks != nil {
		deps.DiskUUIDs = func(context.Context) ([]string, error) { return disks, nil }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return Run(ctx, w.cfg, deps, testLogger(w.t))
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

func signBundle(t testing.TB, m *manifest.Manifest, k ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := manifest.Sign(m, k)
	must(t, err)
	enc, err := json.Marshal(b)
	must(t, err)
	return enc
}

func pemCerts(cs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range cs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (w *world) consoleHas(sub string) bool { return strings.Contains(w.console.String(), sub) }
