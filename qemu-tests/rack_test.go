package qemutests

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/roots"
	"github.com/palisade-cc/palisade/keyd"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

const (
	testCluster = "vmtest"
	keydPort    = 7443
)

// rack is one test's boot network: a namespace with the provisioner (the
// real binary, authoritative DHCP + TFTP + HTTP boot on the bridge only)
// and keyd (in this process, attesting as an emulated SEV-SNP machine under
// the run's test chain), both listening on the gateway address.
type rack struct {
	t     *testing.T
	img   *testImage
	net   *vm.Network
	prov  *exec.Cmd
	provL *bytes.Buffer
	// images served by the provisioner, by profile name.
	keyd     *keyd.Keyd
	keydAddr string
	keydLog  *syncBuffer
	// owner is what the owner's init of keyd left: its key and client.
	owner *meshOwner
	// verified records what keyd's verifiers proved, by node platform.
	mu       sync.Mutex
	verified []attest.Verified
	accept   []acceptRule
	// files are served beside the images (name → path), reserve pins
	// DHCP addresses (MAC → address): set before serve.
	files   map[string]string
	reserve map[string]string
}

// acceptRule boots mac from image under profile; keyd overrides the
// profile's keyd hint (default: the rack's keyd).
type acceptRule struct{ mac, profile, image, keyd string }

// platform is the provisioner profile's (informational) platform.
func (a acceptRule) platform() string {
	switch {
	case strings.HasPrefix(a.profile, "snp"):
		return "sev-snp"
	case strings.HasPrefix(a.profile, "tdx"):
		return "tdx"
	}
	return "tpm"
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newRack starts keyd; the provisioner starts with the first boot, once
// the machines it accepts are known.
func newRack(t *testing.T, subnet string) *rack {
	t.Helper()
	r := &rack{t: t, img: image(t), net: vm.NewNetwork(t, subnet), keydLog: &syncBuffer{}}
	r.startKeyd()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keyd log:\n%s", tail(r.keydLog.String(), 60))
			if r.provL != nil {
				t.Logf("provisioner log:\n%s", tail(r.provL.String(), 30))
			}
		}
	})
	return r
}

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

type recordingVerifier struct {
	attest.Verifier
	r *rack
}

func (v recordingVerifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	res, err := v.Verifier.Verify(ctx, ev, in)
	if err == nil {
		v.r.mu.Lock()
		v.r.verified = append(v.r.verified, *res)
		v.r.mu.Unlock()
	}
	return res, err
}

func (r *rack) startKeyd() {
	t, img := r.t, r.img
	dir := t.TempDir()
	// keyd pins every platform's test roots: the TPM vendor CA, the SNP
	// chain, the TDX PCK/QE chain.
	writePEMs(t, filepath.Join(dir, "tpm-roots.pem"), img.CA.Root)
	writePEMs(t, filepath.Join(dir, "tpm-intermediates.pem"), img.CA.Intermediate)
	if err := img.Chain.WriteBundle(filepath.Join(dir, "kds"), snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	writePEMs(t, filepath.Join(dir, "tdx-root.pem"), img.TDX.PKI.Root)
	if err := os.Mkdir(filepath.Join(dir, "pcs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tdxtest.WriteDir(filepath.Join(dir, "pcs"), img.TDX.Bundle); err != nil {
		t.Fatal(err)
	}
	rc := roots.Config{TPMRoots: "tpm-roots.pem", TPMIntermediates: "tpm-intermediates.pem",
		SNP:              map[string]roots.SNP{"Milan": {VCEKChain: "kds/kdsintf.amd.com/vcek/v1/Milan/cert_chain"}},
		SNPCollateralDir: "kds", TDXRoot: "tdx-root.pem", TDXCollateralDir: "pcs"}
	vs, err := rc.Verifiers(dir)
	if err != nil {
		t.Fatal(err)
	}
	// keyd's verifiers record what they proved; the owner's do not.
	owned := maps.Clone(vs)
	for p, v := range vs {
		vs[p] = recordingVerifier{v, r}
	}
	cfg := &keyd.Config{Version: keyd.ConfigVersion, ClusterID: testCluster, NodeID: "keyd-0", Profile: img.KeydRef.Profile,
		Listen: fmt.Sprintf("%s:%d", r.net.Gateway, keydPort), StatePath: filepath.Join(dir, "state.db"),
		ManifestPath: img.Bundle, ManifestKeys: []string{img.PubPEM}, ManifestWithoutLogProof: true,
		LogKeyFile: filepath.Join(dir, "log.key"), Attester: keyd.AttesterConfig{Platform: attest.PlatformSNP}, Roots: rc}
	logger := slog.New(slog.NewTextHandler(r.keydLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	keys, err := keyd.LoadManifestKeys(cfg.ManifestKeys)
	if err != nil {
		t.Fatal(err)
	}
	man, err := keyd.LoadSignedManifest(img.Bundle, keyd.ManifestOptions{Keys: keys, AllowNoLogProof: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	st, err := bbolt.Open(cfg.StatePath, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	seed := make([]byte, ed25519.SeedSize)
	rand.Read(seed)
	signer, _, err := auditlog.NewSigner("palisade-keyd/"+testCluster, ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	lg, err := auditlog.New(st, "palisade-keyd/"+testCluster, signer)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k, err := keyd.New(ctx, cfg, keyd.Options{Store: st, Log: lg, References: man, Logger: logger,
		Attester:  &snp.Attester{Transport: &snptest.Transport{Chain: img.Chain}},
		Verifiers: vs})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r.keyd = k
	// One listener on the bridge for the nodes, one on loopback for the
	// owner's init (this process is not in the namespace).
	ln, err := r.net.Listen(cfg.Listen)
	if err != nil {
		cancel()
		t.Fatalf("keyd listen in %s: %v", r.net.NS, err)
	}
	own, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r.keydAddr = cfg.Listen
	done := make(chan error, 2)
	go func() { done <- k.Serve(ctx, ln) }()
	go func() { done <- k.Serve(ctx, own) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			err := <-done
			switch {
			case err == nil, errors.Is(err, context.Canceled):
			case errors.Is(err, context.DeadlineExceeded):
				// keyd's Shutdown waits 5 s for requests; a guest's
				// long poll (attestd serve) holds one for up to its wait,
				// and its VM is already gone. Not a failure of the test.
				t.Logf("keyd Serve: shutdown with long polls still open: %v", err)
			default:
				t.Errorf("keyd Serve: %v", err)
			}
		}
	})

	// The owner initialises keyd (what verifier init does), judging keyd
	// against the manifest's keyd reference first, and keeps its key and
	// client (revocations).
	o := &meshOwner{verifiers: owned}
	_, o.key, _ = ed25519.GenerateKey(rand.Reader)
	master := make([]byte, api.MasterSecretSize)
	rand.Read(master)
	keydRef := img.KeydRef
	o.keyd, err = api.NewClient(own.Addr().String(), &atls.Config{ClusterID: testCluster,
		Claims:    attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"},
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: owned[attest.PlatformSNP]},
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Role != attest.RoleKeyd || peer.Profile != keydRef.Profile {
				return nil, fmt.Errorf("peer %s/%s is not keyd", peer.Role, peer.Profile)
			}
			return &keydRef, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.keyd.Close)
	ictx, icancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer icancel()
	if err := o.keyd.Init(ictx, &api.InitRequest{ClusterID: testCluster, MasterSecret: master,
		OwnerKey: o.key.Public().(ed25519.PublicKey), Config: api.ClusterConfig{MeshIPv4: "10.99.0.0/16"}}); err != nil {
		t.Fatalf("owner init of keyd: %v", err)
	}
	r.owner = o
	r.mu.Lock()
	r.verified = nil // the owner's check of keyd is not a node's
	r.mu.Unlock()
}

func writePEMs(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Verified returns what keyd's verifiers proved so far.
func (r *rack) Verified() []attest.Verified {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attest.Verified(nil), r.verified...)
}

// serve starts the provisioner with one accept rule per machine: the
// machine's MAC boots the given image. The image files are copied into
// the provisioner's images directory (world-readable, as TFTP wants).
func (r *rack) serve(rules ...acceptRule) {
	t := r.t
	t.Helper()
	if r.prov != nil {
		t.Fatal("provisioner already started")
	}
	dir := t.TempDir()
	imgs := filepath.Join(dir, "images")
	if err := os.MkdirAll(imgs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte(rackToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, p := range r.files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(imgs, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var reservations []string
	for mac, ip := range r.reserve {
		reservations = append(reservations, fmt.Sprintf(`{"mac": %q, "ip": %q}`, mac, ip))
	}
	gw := r.net.Gateway.String()
	var profiles, accepts []string
	seen := map[string]bool{}
	for _, a := range rules {
		if !seen[a.profile] {
			seen[a.profile] = true
			b, err := os.ReadFile(a.image)
			if err != nil {
				t.Fatal(err)
			}
			name := a.profile + ".efi"
			if err := os.WriteFile(filepath.Join(imgs, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
			hint := r.keydAddr
			if a.keyd != "" {
				hint = a.keyd
			}
			profiles = append(profiles, fmt.Sprintf(`{"name": %q, "image": %q, "platform": %q, "role": "worker", "keyd_hints": [%q], "cluster": %q}`,
				a.profile, name, a.platform(), hint, testCluster))
		}
		accepts = append(accepts, fmt.Sprintf(`{"name": %q, "mac_prefix": %q, "profile": %q}`, "m"+strings.ReplaceAll(a.mac, ":", ""), a.mac, a.profile))
	}
	cfg := fmt.Sprintf(`{"version": 1, "data_dir": %q,
  "api": {"listen": "%s:8081", "admin_token_file": %q},
  "dhcp": {"mode": "authoritative", "interfaces": [%q],
    "subnets": [{"cidr": %q, "range_start": %q, "range_end": %q, "lease_time": "1h", "reservations": [%s]}]},
  "tftp": {"listen": "%s:69"}, "http": {"listen": "%s:8080"},
  "accept": [%s], "profiles": [%s]}`, dir, gw, tok, r.net.Bridge, r.net.Prefix.String(),
		r.net.Addr(100).String(), r.net.Addr(150).String(), strings.Join(reservations, ","), gw, gw, strings.Join(accepts, ","), strings.Join(profiles, ","))
	cf := filepath.Join(dir, "provisioner.json")
	if err := os.WriteFile(cf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r.provL = &bytes.Buffer{}
	r.prov = r.net.Command(goBin(t, "provisioner"), "serve", "--config", cf)
	r.prov.Stdout, r.prov.Stderr = r.provL, r.provL
	if err := r.prov.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.prov.Process.Kill()
		r.prov.Wait()
	})
	// Ready when the API answers inside the namespace.
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := r.net.Do(func() error {
			c, err := net.DialTimeout("tcp", gw+":8081", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("provisioner did not start: %v\n%s", err, r.provL.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rackToken is the provisioner's admin API token of this test binary:
// random, since the demo forwards the web UI to a host loopback port.
var rackToken = func() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}()

var (
	binMu    sync.Mutex
	binBuilt = map[string]string{}
)

// goBin builds the project's command name (./<name>/cmd/<name>) once per
// test binary into out/qemu-tests/bin: the provisioner the rack runs, the
// owner's verifier.
func goBin(t *testing.T, name string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binBuilt[name]; ok {
		return p
	}
	p := filepath.Join(outDir(), "bin", name)
	if out, err := exec.Command("go", "build", "-o", p, "../"+name+"/cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", name, err, out)
	}
	binBuilt[name] = p
	return p
}

// provisionerEvent is an inventory event as the provisioner's API returns it.
type provisionerEvent struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
	State  string `json:"state"`
}

// events returns a machine's timeline from the provisioner's API (inside
// the namespace, with the admin token serve wrote).
func (r *rack) events(t *testing.T, mac string) []provisionerEvent {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := r.net.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest("GET", fmt.Sprintf("http://%s:8081/api/v1/machines/%s/events", r.net.Gateway, mac), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+rackToken)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var evs []provisionerEvent
	if err := json.NewDecoder(resp.Body).Decode(&evs); err != nil {
		t.Fatalf("events of %s: %s: %v", mac, resp.Status, err)
	}
	return evs
}

// waitStatus waits until the provisioner's timeline of mac holds a node
// status report whose detail contains want (reports are best effort and
// asynchronous to the console).
func (r *rack) waitStatus(t *testing.T, mac, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs := r.events(t, mac)
		for _, e := range evs {
			if e.Kind == "node-status" && strings.Contains(e.Detail, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("provisioner timeline of %s has no node status %q: %+v", mac, want, evs)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}
