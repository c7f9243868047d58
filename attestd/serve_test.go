package attestd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// testEndpoints are the endpoints the test node claims.
var testEndpoints = []string{"192.0.2.10:51820", "[2001:db8::10]:51820"}

// bindingAttester records the claims digest of every binding it attested.
type bindingAttester struct {
	attest.Attester
	mu      sync.Mutex
	digests [][32]byte
}

func (b *bindingAttester) Attest(ctx context.Context, ch []byte, bd attest.Binding) (*attest.Evidence, error) {
	b.mu.Lock()
	b.digests = append(b.digests, bd.ClaimsDigest)
	b.mu.Unlock()
	return b.Attester.Attest(ctx, ch, bd)
}

func (b *bindingAttester) seen() [][32]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][32]byte(nil), b.digests...)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// served is a joined node whose `attestd serve` runs.
type served struct {
	w       *world
	adm     *Admission
	ba      *bindingAttester
	sock    string
	attest  string
	console *syncBuf
	stop    func() error
}

func (w *world) deps(m *Machine, console io.Writer) Deps {
	return Deps{
		Detect:    func(context.Context, *Config, *slog.Logger) (*Machine, error) { return m, nil },
		NodeID:    func() (string, error) { return testNodeID, nil },
		Endpoints: func(int) ([]string, error) { return testEndpoints, nil },
		Console:   console,
	}
}

// joinAndServe joins the world's keyd as an SEV-SNP node, then starts
// Serve on a socket in a temporary directory and an attestation endpoint
// on loopback.
func joinAndServe(t *testing.T, edit func(*ServeConfig, *Deps)) *served {
	t.Helper()
	w := newWorld(t, worldOpts{})
	m, _ := w.snpNode()
	ba := &bindingAttester{Attester: m.Attester}
	m.Attester = ba
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adm, err := Run(ctx, w.cfg, w.deps(m, &w.console), testLogger(t))
	if err != nil {
		t.Fatalf("join: %v\n%s", err, w.console.String())
	}
	s := &served{w: w, adm: adm, ba: ba, console: &syncBuf{}, sock: filepath.Join(t.TempDir(), "keyd.sock")}
	cfg := ServeConfig{Config: w.cfg, Socket: s.sock, AttestListen: "127.0.0.1:0", AttestTimeout: 10 * time.Second}
	deps := w.deps(m, s.console)
	if edit != nil {
		edit(&cfg, &deps)
	}
	sctx, scancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(sctx, cfg, deps, testLogger(t)) }()
	s.stop = func() error { scancel(); return <-done }
	t.Cleanup(func() { s.stop() })
	re := regexp.MustCompile(`attestation=(\S+)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := re.FindStringSubmatch(s.console.String()); m != nil {
			s.attest = m[1]
			return s
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, s.console.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", s.console.String())
		}
	}
}

// socketClient is what meshd builds: an api.Client whose HTTP goes to the
// unix socket.
func socketClient(path string) *api.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}
	return &api.Client{HTTP: &http.Client{Transport: tr}, Base: "http://attestd"}
}

// TestServeProxiesPeers: meshd's view through the socket is keyd's peer
// set, fetched on the node's own attested session, whose evidence commits
// to exactly the join's claims (same WireGuard key, node ID, endpoints,
// disk UUIDs); keyd's set carries the claimed endpoints; the socket is
// 0600; a long poll with nothing new returns the same revision after the
// wait.
func TestServeProxiesPeers(t *testing.T) {
	s := joinAndServe(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := socketClient(s.sock)
	set, err := c.Peers(ctx, 0, time.Second)
	if err != nil {
		t.Fatalf("peers through the socket: %v\n%s", err, s.console.String())
	}
	if len(set.Peers) != 1 || set.Peers[0].NodeID != testNodeID {
		t.Fatalf("peer set %+v, want this node", set)
	}
	p := set.Peers[0]
	if !bytes.Equal(p.WireGuardKey, s.adm.Claims.WireGuardKey) || !cmp.Equal(p.Endpoints, testEndpoints) || p.MeshAddress != s.adm.MeshAddress {
		t.Errorf("peer %+v, want key %x endpoints %v mesh %s", p, s.adm.Claims.WireGuardKey, testEndpoints, s.adm.MeshAddress)
	}
	if !cmp.Equal(s.adm.Claims.Endpoints, testEndpoints) {
		t.Errorf("join claimed endpoints %v, want %v", s.adm.Claims.Endpoints, testEndpoints)
	}
	want := s.adm.Claims.Digest()
	ds := s.ba.seen()
	if len(ds) < 2 {
		t.Fatalf("%d attestations, want the join's and serve's", len(ds))
	}
	for i, d := range ds {
		if d != want {
			t.Errorf("attestation %d committed to claims %x, want the join's %x", i, d, want)
		}
	}
	st, err := os.Stat(s.sock)
	must(t, err)
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want a socket with 0600", st.Mode())
	}
	start := time.Now()
	again, err := c.Peers(ctx, set.Revision, 500*time.Millisecond)
	if err != nil || again.Revision != set.Revision {
		t.Fatalf("long poll: %+v %v", again, err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("long poll returned after %s, want the 500ms wait", d)
	}
	if !strings.Contains(s.console.String(), "attestd: serving node="+testNodeID) {
		t.Errorf("console lacks the serving line:\n%s", s.console.String())
	}
}

// TestServeRevoked: once the owner revokes the node, the proxy answers
// meshd with keyd's denial (403), which api.Client reads as ErrDenied.
func TestServeRevoked(t *testing.T) {
	s := joinAndServe(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := socketClient(s.sock)
	if _, err := c.Peers(ctx, 0, time.Second); err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, api.OwnerNonceSize)
	rand.Read(nonce)
	req := &api.OwnerRequest{Action: api.ActionRevokeNode, ClusterID: testCluster, NodeID: testNodeID,
		Timestamp: time.Now().Unix(), Nonce: nonce}
	req.Sign(s.w.owner)
	must(t, s.w.ownerClient(s.w.chain).Revoke(ctx, req))
	if _, err := c.Peers(ctx, 0, time.Second); !errors.Is(err, api.ErrDenied) {
		t.Fatalf("peers after revocation: %v, want ErrDenied", err)
	}
}

// TestServeProxyOnlyPeers: the socket serves GET /v1/peers and refuses
// everything else without reaching keyd — admit above all, which would
// return disk keys — and keyd's registry is unchanged by the attempts.
func TestServeProxyOnlyPeers(t *testing.T) {
	s := joinAndServe(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, err := s.w.ownerClient(s.w.chain).Nodes(ctx)
	must(t, err)
	n := len(s.ba.seen())
	c := socketClient(s.sock)
	for _, r := range []struct{ method, path string }{
		{"POST", api.PathAdmit}, {"GET", api.PathAdmit}, {"POST", api.PathPeers}, {"GET", api.PathNodes},
		{"POST", api.PathReplicaJoin}, {"POST", api.PathRevoke}, {"GET", api.PathManifest}, {"GET", "/v1/peers/"},
		{"GET", "/"}, {"GET", "/v1/../v1/admit"},
	} {
		req, err := http.NewRequestWithContext(ctx, r.method, "http://attestd"+r.path, strings.NewReader("{}"))
		must(t, err)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", r.method, r.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 == 2 || bytes.Contains(body, []byte("disk_keys")) {
			t.Errorf("%s %s: %s %s, want a refusal", r.method, r.path, resp.Status, body)
		}
	}
	if got := len(s.ba.seen()); got != n {
		t.Errorf("refused requests made %d attestations (a session with keyd)", got-n)
	}
	after, err := s.w.ownerClient(s.w.chain).Nodes(ctx)
	must(t, err)
	if d := cmp.Diff(before, after); d != "" {
		t.Errorf("keyd's registry changed (-before +after):\n%s", d)
	}
}

// fakePeers records what the proxy asked.
type fakePeers struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (f *fakePeers) Peers(_ context.Context, since uint64, wait time.Duration) (*api.PeerSet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, time.Duration(wait).String())
	if f.err != nil {
		return nil, f.err
	}
	return &api.PeerSet{Revision: since + 1, Peers: []api.Peer{{NodeID: "n1", MeshAddress: "fd00::1"}}}, nil
}

// TestPeersProxyQuery: the proxy checks since and wait as keyd does,
// passes them on, and maps keyd's errors to the generic answers.
func TestPeersProxyQuery(t *testing.T) {
	f := &fakePeers{}
	h := PeersProxy(f, slog.New(slog.DiscardHandler))
	for _, c := range []struct {
		query string
		code  int
	}{
		{"since=3&wait=2s", 200}, {"", 200}, {"since=-1", 400}, {"since=x", 400}, {"wait=61s", 400},
		{"wait=-1s", 400}, {"wait=soon", 400}, {"since=1&extra=1", 400},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", api.PathPeers+"?"+c.query, nil))
		if rec.Code != c.code {
			t.Errorf("?%s: %d %s, want %d", c.query, rec.Code, rec.Body, c.code)
		}
	}
	if !cmp.Equal(f.calls, []string{"2s", api.DefaultPeersWait.String()}) {
		t.Errorf("upstream calls %v, want the two valid ones", f.calls)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", api.PathPeers+"?since=3", nil))
	var set api.PeerSet
	if err := json.Unmarshal(rec.Body.Bytes(), &set); err != nil || set.Revision != 4 {
		t.Errorf("answer %s (%v), want revision 4", rec.Body, err)
	}
	for err, code := range map[error]int{api.ErrDenied: 403, api.ErrRetryLater: 503, errors.New("reset"): 503} {
		f.err = err
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", api.PathPeers, nil))
		if rec.Code != code || strings.Contains(rec.Body.String(), "reset") {
			t.Errorf("upstream %v: %d %s, want %d and a generic body", err, rec.Code, rec.Body, code)
		}
	}
}

// ownerDial attests the node at addr as `verifier node` does: no evidence
// of its own, the pinned SNP roots, the manifest's node reference.
func ownerDial(t *testing.T, w *world, addr, cluster string, ref *attest.Reference, a attest.Attester) (*atls.Conn, error) {
	t.Helper()
	dir := t.TempDir()
	must(t, w.chain.WriteBundle(dir, snptest.BundleOptions{}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return atls.Dial(ctx, "tcp", addr, &atls.Config{ClusterID: cluster, Attester: a,
		Claims:    attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"},
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: &snp.Verifier{Roots: w.chain.Roots(), Getter: &snp.Collateral{Dir: dir}}},
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Role != attest.RoleNode || peer.Profile != ref.Profile {
				return nil, attest.Denyf(attest.ClassPolicy, "peer %s/%s", peer.Role, peer.Profile)
			}
			return ref, nil
		}})
}

// TestServeAttestationEndpoint: the owner's verifier, with no evidence of
// its own, attests the node live: the evidence verifies against the pinned
// roots and the node's reference, is bound to this connection and cluster,
// and commits to the join's claims. A client that attests itself is
// served too. Negative: the same verifier with another cluster ID, or
// another reference, is denied — so the success above is a verification.
func TestServeAttestationEndpoint(t *testing.T) {
	s := joinAndServe(t, nil)
	c, err := ownerDial(t, s.w, s.attest, testCluster, s.w.nodeRef, nil)
	if err != nil {
		t.Fatalf("owner's attestation of the node: %v", err)
	}
	v, claims := c.PeerVerified(), c.PeerClaims()
	c.Close()
	if v == nil || v.Platform != attest.PlatformSNP || v.Profile != nodeProfile {
		t.Fatalf("verified %+v", v)
	}
	if d := cmp.Diff(s.adm.Claims, claims); d != "" {
		t.Errorf("attested claims differ from the join's (-join +served):\n%s", d)
	}
	// A client with hardware of its own (another node) is served alike.
	other := snpMachine(&snptest.Transport{Chain: s.w.chain}, "another node", nil)
	if c, err := ownerDial(t, s.w, s.attest, testCluster, s.w.nodeRef, other.Attester); err != nil {
		t.Errorf("attested client: %v", err)
	} else {
		c.Close()
	}
	if _, err := ownerDial(t, s.w, s.attest, "other-cluster", s.w.nodeRef, nil); err == nil {
		t.Error("evidence for cluster " + testCluster + " verified for other-cluster")
	}
	ref := *s.w.nodeRef
	snpRef := *s.w.nodeRef.SNP
	ref.SNP = &snpRef
	ref.SNP.Measurement = bytes.Repeat([]byte{7}, 48)
	if _, err := ownerDial(t, s.w, s.attest, testCluster, &ref, nil); err == nil {
		t.Error("the node verified against a reference with another measurement")
	}
}

// TestServeAttestationBounded: clients that connect and say nothing hold
// at most MaxAttestations handshakes, each for at most AttestTimeout; a
// real verifier still gets through once they time out.
func TestServeAttestationBounded(t *testing.T) {
	s := joinAndServe(t, func(c *ServeConfig, _ *Deps) { c.MaxAttestations, c.AttestTimeout = 2, time.Second })
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", s.attest)
		must(t, err)
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	start := time.Now()
	c, err := ownerDial(t, s.w, s.attest, testCluster, s.w.nodeRef, nil)
	if err != nil {
		t.Fatalf("attestation behind stalled clients: %v", err)
	}
	c.Close()
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("served after %s although 2 slots were held by stalled clients for 1s", d)
	}
	// The stalled clients were cut off at the time-out.
	idle[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle[0].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("stalled client not closed by the server: %v", err)
	}
}

// TestServeClaimsChecks: serve refuses to attest with claims that no
// longer describe this boot: another node ID, a WireGuard key file whose
// key is not the admitted one, or a record that is not a node's. Changed
// endpoints only warn: the admitted ones are served.
func TestServeClaimsChecks(t *testing.T) {
	w := newWorld(t, worldOpts{})
	m, _ := w.snpNode()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adm, err := Run(ctx, w.cfg, w.deps(m, &w.console), testLogger(t))
	must(t, err)
	cfg := w.cfg
	cfg.SetDefaults()
	rec, err := LoadRecord(filepath.Join(cfg.RunDir, "admission.json"))
	must(t, err)
	deps := w.deps(m, io.Discard)
	deps.defaults()
	got, err := serveClaims(rec, &cfg, &deps, testLogger(t))
	if err != nil || !cmp.Equal(got, adm.Claims) {
		t.Fatalf("claims %+v %v, want the join's %+v", got, err, adm.Claims)
	}
	moved := deps
	moved.Endpoints = func(int) ([]string, error) { return []string{"198.51.100.1:51820"}, nil }
	if got, err := serveClaims(rec, &cfg, &moved, testLogger(t)); err != nil || !cmp.Equal(got.Endpoints, testEndpoints) {
		t.Errorf("moved endpoints: %v %v, want the admitted %v", got.Endpoints, err, testEndpoints)
	}
	other := deps
	other.NodeID = func() (string, error) { return "another-node", nil }
	if _, err := serveClaims(rec, &cfg, &other, testLogger(t)); err == nil || !strings.Contains(err.Error(), "another-node") {
		t.Errorf("another node ID: %v", err)
	}
	k, _ := wgtypes.GeneratePrivateKey()
	keyCfg := cfg
	keyCfg.WireGuardKeyPath = filepath.Join(t.TempDir(), "wg.key")
	must(t, os.WriteFile(keyCfg.WireGuardKeyPath, []byte(k.String()+"\n"), 0o600))
	if _, err := serveClaims(rec, &keyCfg, &deps, testLogger(t)); err == nil || !strings.Contains(err.Error(), "not the one the node was admitted with") {
		t.Errorf("another WireGuard key: %v", err)
	}
	// Serve itself stops on it before serving anything.
	err = Serve(ctx, ServeConfig{Config: cfg, Socket: filepath.Join(t.TempDir(), "s"), AttestListen: "-"}, other, testLogger(t))
	if err == nil {
		t.Error("Serve ran with another node ID")
	}
}

// TestLoadRecord: the record is read strictly and must describe a node.
func TestLoadRecord(t *testing.T) {
	k, _ := wgtypes.GeneratePrivateKey()
	pub := k.PublicKey()
	good := Record{NodeID: "n1", Cluster: "c1", Profile: "p1", Platform: "tpm", Keyd: "10.0.0.1:7443",
		Claims: attest.Claims{NodeID: "n1", Role: attest.RoleNode, Profile: "p1", WireGuardKey: pub[:]}}
	for _, c := range []struct {
		name string
		edit func(map[string]any)
		err  string
	}{
		{"good", func(map[string]any) {}, ""},
		{"unknown field", func(m map[string]any) { m["extra"] = 1 }, "unknown field"},
		{"no cluster", func(m map[string]any) { m["cluster"] = "" }, "cluster"},
		{"keyd role", func(m map[string]any) { m["claims"].(map[string]any)["role"] = "keyd" }, "not the admitted node"},
		{"other node", func(m map[string]any) { m["claims"].(map[string]any)["node_id"] = "n2" }, "not the admitted node"},
		{"no key", func(m map[string]any) { delete(m["claims"].(map[string]any), "wireguard_key") }, "wireguard_key"},
	} {
		b, _ := json.Marshal(good)
		var m map[string]any
		must(t, json.Unmarshal(b, &m))
		c.edit(m)
		b, _ = json.Marshal(m)
		p := filepath.Join(t.TempDir(), "admission.json")
		must(t, os.WriteFile(p, b, 0o600))
		_, err := LoadRecord(p)
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.err)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"node_id":"n1","cluster":"c1","profile":"p","claims":{"node_id":"n1","role":"node","profile":"p","wireguard_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"claims":{"endpoints":[""]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err == nil && (r.Claims.Validate() != nil || r.Claims.NodeID != r.NodeID || len(r.Claims.WireGuardKey) != 32) {
			t.Fatalf("accepted %q", b)
		}
	})
}

func FuzzPeersProxyQuery(f *testing.F) {
	for _, q := range []string{"since=1&wait=2s", "", "since=18446744073709551616", "wait=1h", "a=b&since=1", "%zz"} {
		f.Add(q)
	}
	h := PeersProxy(&fakePeers{}, slog.New(slog.DiscardHandler))
	f.Fuzz(func(t *testing.T, q string) {
		req := httptest.NewRequest("GET", api.PathPeers, nil)
		req.URL.RawQuery = q
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 && rec.Code != 400 {
			t.Fatalf("?%q: %d", q, rec.Code)
		}
	})
}
