package meshd

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
)

// The real keyd the host acceptance test runs (ARCHITECTURE §7: emulated
// SEV-SNP with go-sev-guest's test roots, as keyd's and attestd's tests do).
// Test files may import keyd itself; meshd's code imports only keyd/api.
const (
	hkCluster     = "mesh-cluster"
	hkOrigin      = "keyd.test/" + hkCluster
	hkKeydProfile = "snp-keyd"
	hkNodeProfile = "snp-node"
	// hkPollWait is meshd's long-poll wait. Short, because keyd's Serve
	// lets running requests finish before it returns (its shutdown is
	// graceful), and a long poll is a running request.
	hkPollWait = 2
)

// testKeyd is one keyd replica listening on the bridge namespace's br0
// (192.168.77.254), reachable from every node namespace and from none of the
// host's interfaces. It can be stopped and started again on the same state.
type testKeyd struct {
	t          *testing.T
	ns         int
	addr       string
	chain      *snptest.Chain
	keydRef    *attest.Reference
	nodeRef    *attest.Reference
	signKey    ed25519.PrivateKey
	bundle     []byte
	collateral string // keyd's KDS bundle (VCEK chain, CRLs)
	nodeColl   string // the nodes' own copy, to verify keyd with
	statePath  string
	sealKey    []byte
	owner      ed25519.PrivateKey
	log        *slog.Logger

	st     *bbolt.Store
	cancel context.CancelFunc
	done   chan error
}

func newTestKeyd(t *testing.T, m *hostMesh) *testKeyd {
	t.Helper()
	run(t, "ip", "-n", m.bridge, "addr", "add", "192.168.77.254/24", "dev", "br0")
	// The owner's client dials keyd from the same namespace: over lo.
	run(t, "ip", "-n", m.bridge, "link", "set", "lo", "up")
	f, err := os.Open("/run/netns/" + m.bridge)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	chain, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	k := &testKeyd{t: t, ns: int(f.Fd()), chain: chain, collateral: filepath.Join(dir, "keyd-kds"),
		nodeColl: filepath.Join(dir, "node-kds"), statePath: filepath.Join(dir, "keyd.db"),
		sealKey: bytes.Repeat([]byte{7}, 32), log: testLog(t)}
	for _, d := range []string{k.collateral, k.nodeColl} {
		if err := chain.WriteBundle(d, snptest.BundleOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	k.keydRef = chain.Reference()
	k.keydRef.Profile = hkKeydProfile
	k.nodeRef = chain.Reference()
	k.nodeRef.Profile = hkNodeProfile
	k.signKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	b, err := manifest.Sign(&manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "0.1.0", SecurityVersion: 1,
		Files:      map[string]attest.HexBytes{"palisade.efi": bytes.Repeat([]byte{0xef}, 32)},
		References: []attest.Reference{*k.nodeRef}, Keyd: []attest.Reference{*k.keydRef}}, k.signKey)
	if err != nil {
		t.Fatal(err)
	}
	if k.bundle, err = json.Marshal(b); err != nil {
		t.Fatal(err)
	}
	k.start()
	t.Cleanup(func() {
		if k.cancel != nil {
			if _, err := k.stop(); err != nil {
				t.Errorf("keyd stop: %v", err)
			}
		}
	})
	_, k.owner, _ = ed25519.GenerateKey(rand.Reader)
	master := make([]byte, api.MasterSecretSize)
	rand.Read(master)
	if err := k.ownerClient().Init(ctxFor(t, 20*time.Second), &api.InitRequest{ClusterID: hkCluster, MasterSecret: master,
		OwnerKey: k.owner.Public().(ed25519.PublicKey), Config: api.ClusterConfig{MeshIPv4: "10.77.0.0/16"}}); err != nil {
		t.Fatal(err)
	}
	return k
}

// start builds keyd as keyd.Run would (bbolt state, admission log, signed
// manifest, SEV-SNP attester and verifier, seal key) and serves it on the
// bridge; a restart reopens the same state file and listens on the same
// address.
func (k *testKeyd) start() {
	t := k.t
	t.Helper()
	st, err := bbolt.Open(k.statePath, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	signer, _, err := auditlog.NewSigner(hkOrigin, ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	lg, err := auditlog.New(st, hkOrigin, signer)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := keyd.ParseSignedManifest(k.bundle, keyd.ManifestOptions{Keys: []crypto.PublicKey{k.signKey.Public()},
		AllowNoLogProof: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &keyd.Config{Version: keyd.ConfigVersion, ClusterID: hkCluster, NodeID: "keyd-0", Profile: hkKeydProfile,
		Listen: "127.0.0.1:0", StatePath: "unused", ManifestPath: "unused", ManifestKeys: []string{"unused"}, LogKeyFile: "unused",
		Attester: keyd.AttesterConfig{Platform: attest.PlatformSNP},
		Roots:    keyd.RootsConfig{SNP: map[string]keyd.SNPRoots{"Milan": {VCEKChain: "unused"}}, SNPCollateralDir: "unused"}}
	kd, err := keyd.New(context.Background(), cfg, keyd.Options{Store: st, Log: lg, References: refs,
		Attester: &snp.Attester{Transport: &snptest.Transport{Chain: k.chain}},
		Verifiers: map[attest.Platform]attest.Verifier{
			attest.PlatformSNP: &snp.Verifier{Roots: k.chain.Roots(), Getter: &snp.Collateral{Dir: k.collateral}}},
		SealKey: k.sealKey, Logger: k.log})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if restart := k.addr != ""; restart && !kd.Unlocked() {
		st.Close()
		t.Fatal("keyd: locked after start; the sealed master secret should unlock it")
	}
	addr := k.addr
	if addr == "" {
		addr = "192.168.77.254:0"
	}
	var ln net.Listener
	if err := inNS(k.ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		st.Close()
		t.Fatal(err)
	}
	k.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	k.st, k.cancel, k.done = st, cancel, make(chan error, 1)
	go func() { k.done <- kd.Serve(ctx, ln) }()
}

// stop ends Serve and closes the state, as a keyd process exiting would;
// it returns how long that took.
func (k *testKeyd) stop() (time.Duration, error) {
	start := time.Now()
	k.cancel()
	err := <-k.done
	k.cancel = nil
	return time.Since(start), errors.Join(err, k.st.Close())
}

// nsClient is an api.Client whose TCP connections start in network namespace
// nsfd (api.NewClient dials in the caller's namespace); the aTLS handshake
// and everything above it are the production code's.
func nsClient(t *testing.T, nsfd int, addr string, cfg *atls.Config) *api.Client {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var c net.Conn
			if err := inNS(nsfd, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err }); err != nil {
				return nil, err
			}
			return atls.Client(ctx, c, cfg)
		},
		MaxIdleConnsPerHost:   4,
		ResponseHeaderTimeout: api.MaxPeersWait + 10*time.Second,
		DisableCompression:    true,
	}
	c := &api.Client{HTTP: &http.Client{Transport: tr}, Base: "http://" + addr}
	t.Cleanup(c.Close)
	return c
}

// verifyKeyd is a peer's view of keyd: SEV-SNP evidence chaining to the
// pinned test roots, measured as the manifest's keyd reference.
func (k *testKeyd) verifyKeyd(claims attest.Claims, att attest.Attester) *atls.Config {
	return &atls.Config{ClusterID: hkCluster, Claims: claims, Attester: att,
		Verifiers: map[attest.Platform]attest.Verifier{
			attest.PlatformSNP: &snp.Verifier{Roots: k.chain.Roots(), Getter: &snp.Collateral{Dir: k.nodeColl}}},
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Role != attest.RoleKeyd || peer.Profile != hkKeydProfile {
				return nil, fmt.Errorf("peer role %q profile %q is not keyd", peer.Role, peer.Profile)
			}
			return k.keydRef, nil
		},
		AcceptPeer: func(peer attest.Claims) error {
			if peer.Role != attest.RoleKeyd {
				return errors.New("not keyd")
			}
			return nil
		}}
}

// ownerClient is the owner's verifier CLI on the management side (the
// bridge namespace): no evidence of its own, but it verifies keyd.
func (k *testKeyd) ownerClient() *api.Client {
	return nsClient(k.t, k.ns, k.addr, k.verifyKeyd(attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"}, nil))
}

func (k *testKeyd) revoke(ctx context.Context, nodeID string) error {
	r := &api.OwnerRequest{Action: api.ActionRevokeNode, ClusterID: hkCluster, NodeID: nodeID,
		Timestamp: time.Now().Unix(), Nonce: make([]byte, api.OwnerNonceSize)}
	rand.Read(r.Nonce)
	r.Sign(k.owner)
	return k.ownerClient().Revoke(ctx, r)
}

// meshNode is a node whose mesh is run by meshd.Run, as on a real node.
type meshNode struct {
	*hostNode
	id      string
	keyFile string
	client  *api.Client
}

// attestedNode makes node i's namespace and wireguard-go device and its
// WireGuard key (meshd's key file), and an aTLS client whose SEV-SNP
// evidence claims that key and the node's underlay endpoint; report, if set,
// changes what the emulated firmware signs.
func attestedNode(t *testing.T, m *hostMesh, k *testKeyd, i int, report func(*spb.Report)) *meshNode {
	t.Helper()
	n := &meshNode{hostNode: m.addDevice(t, i), id: fmt.Sprintf("node-%d", i)}
	n.keyFile = filepath.Join(t.TempDir(), "wg.key")
	key, err := LoadOrCreateKey(n.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	n.key = key
	pub := key.PublicKey()
	tr := &snptest.Transport{Chain: k.chain}
	if report != nil {
		tr.Report = func(rd [64]byte) *spb.Report {
			r := k.chain.Report(rd)
			report(r)
			return r
		}
	}
	n.client = nsClient(t, n.nsfd, k.addr, k.verifyKeyd(attest.Claims{NodeID: n.id, Role: attest.RoleNode, Profile: hkNodeProfile,
		WireGuardKey: pub[:], Endpoints: []string{netip.AddrPortFrom(n.under, 51820).String()}}, &snp.Attester{Transport: tr}))
	return n
}

// admit runs the node's admission and then meshd.Run in the node's namespace
// with the aTLS client as its peer source, until the test ends.
func (n *meshNode) admitAndRun(t *testing.T) {
	t.Helper()
	resp, err := n.client.Admit(ctxFor(t, 20*time.Second))
	if err != nil {
		t.Fatalf("%s: admit: %v", n.id, err)
	}
	if resp.NodeID != n.id {
		t.Fatalf("%s: admitted as %q", n.id, resp.NodeID)
	}
	if n.mesh6, err = netip.ParseAddr(resp.MeshAddress); err != nil {
		t.Fatalf("%s: mesh_address %q: %v", n.id, resp.MeshAddress, err)
	}
	if n.mesh4, err = netip.ParseAddr(resp.MeshIPv4); err != nil {
		t.Fatalf("%s: mesh_ipv4 %q: %v", n.id, resp.MeshIPv4, err)
	}
	cfg := Config{Version: 1, Interface: n.ifname, KeyFile: n.keyFile, ListenPort: 51820, MTU: 1420,
		PollWaitSeconds: hkPollWait, StatusListen: DefaultStatusListen}
	cfg.SetDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := testLog(t).With("node", n.id)
	// Run stays on one OS thread in the node's namespace, so wgctrl's and
	// rtnetlink's sockets and the status listener are the node's own, as
	// they are when meshd runs as the node's process.
	go func() {
		done <- inNS(n.nsfd, func() error {
			return Run(ctx, cfg, Self{MeshAddress: resp.MeshAddress, MeshIPv4: resp.MeshIPv4}, n.client, log)
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: meshd.Run: %v", n.id, err)
		}
	})
}

// status is `meshd status` of the node: GET /status on its loopback.
func (n *meshNode) status() (*Status, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNS(n.nsfd, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
			return c, err
		}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + DefaultStatusListen + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var s Status
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("status %s: %s", resp.Status, b)
	}
	return &s, json.NewDecoder(resp.Body).Decode(&s)
}

// peerKeys are the public keys of the peers configured on n's device.
func (m *hostMesh) peerKeys(t *testing.T, n *hostNode) []wgtypes.Key {
	t.Helper()
	d, err := m.wg.Device(n.ifname)
	if err != nil {
		t.Fatal(err)
	}
	var out []wgtypes.Key
	for _, p := range d.Peers {
		out = append(out, p.PublicKey)
	}
	slicesSortKeys(out)
	return out
}

func pubKeys(ns ...*meshNode) []wgtypes.Key {
	var out []wgtypes.Key
	for _, n := range ns {
		out = append(out, n.key.PublicKey())
	}
	slicesSortKeys(out)
	return out
}

// eventually polls cond every 10 ms until it holds or d passes.
func eventually(d time.Duration, cond func() error) error {
	end := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || time.Now().After(end) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() && os.Getenv("MESHD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// TestHostMeshKeyd is issue 10's host acceptance test with a real keyd:
// three nodes, each in its own network namespace with a wireguard-go device,
// admit over mutual aTLS with emulated SEV-SNP evidence that claims their
// WireGuard keys and endpoints, then run meshd.Run with their aTLS client as
// the peer source. A fourth node with a wrong measurement is denied and
// reaches nobody; keyd restarts under live traffic; an owner-signed
// revocation cuts a node off within 5 s.
func TestHostMeshKeyd(t *testing.T) {
	begin := time.Now()
	m := newHostMeshNamed(t, "m2m")
	k := newTestKeyd(t, m)
	var nodes []*meshNode
	for i := 1; i <= 3; i++ {
		n := attestedNode(t, m, k, i, nil)
		n.echo(t)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.admitAndRun(t)
	}

	// Each device converges to exactly the other admitted nodes.
	others := func(n *meshNode, set []*meshNode) []*meshNode {
		return slices.DeleteFunc(slices.Clone(set), func(o *meshNode) bool { return o == n })
	}
	converged := func(set []*meshNode, on []*meshNode) error {
		for _, n := range on {
			if got, want := m.peerKeys(t, n.hostNode), pubKeys(others(n, set)...); !slices.Equal(got, want) {
				return fmt.Errorf("%s: peers %v, want %v", n.id, got, want)
			}
		}
		return nil
	}
	if err := eventually(10*time.Second, func() error { return converged(nodes, nodes) }); err != nil {
		t.Fatalf("mesh did not converge: %v", err)
	}
	// Every admitted pair talks over its keyd-assigned mesh addresses.
	for _, a := range nodes {
		for _, b := range others(a, nodes) {
			for _, to := range []netip.Addr{b.mesh6, b.mesh4} {
				if err := eventually(10*time.Second, func() error { return a.talk(to, time.Second) }); err != nil {
					t.Fatalf("%s → %s (%v) over the mesh: %v", a.id, b.id, to, err)
				}
			}
		}
	}
	t.Logf("3 nodes admitted and meshed in %v", time.Since(begin).Round(time.Millisecond))

	t.Run("denied node reaches nobody", func(t *testing.T) {
		rogue := attestedNode(t, m, k, 4, func(r *spb.Report) { r.Measurement[0] ^= 1 })
		rogue.echo(t)
		_, err := rogue.client.Admit(ctxFor(t, 20*time.Second))
		if !errors.Is(err, atls.ErrPeerDenied) {
			t.Fatalf("admit with a wrong measurement: %v, want a denial", err)
		}
		if _, err := rogue.client.Peers(ctxFor(t, 20*time.Second), 0, time.Second); !errors.Is(err, atls.ErrPeerDenied) {
			t.Fatalf("peer set for a denied node: %v, want a denial", err)
		}
		// It configures itself anyway: an address in the mesh prefix and
		// every admitted node as a peer (keys and endpoints are no secret).
		pfx := keyd.MeshPrefix(hkCluster).Addr().As16()
		pfx[15] = 0x44
		rogue.mesh6, rogue.mesh4 = netip.AddrFrom16(pfx), netip.MustParseAddr("10.77.200.4")
		if err := (Link{NetNS: rogue.nsfd}).Configure(rogue.ifname,
			[]netip.Prefix{netip.PrefixFrom(rogue.mesh6, 64), netip.PrefixFrom(rogue.mesh4, 16)}, 1420); err != nil {
			t.Fatal(err)
		}
		set := &api.PeerSet{Revision: 1}
		for _, n := range append([]*meshNode{rogue}, nodes...) {
			pub := n.key.PublicKey()
			set.Peers = append(set.Peers, api.Peer{NodeID: n.id, WireGuardKey: pub[:], MeshAddress: n.mesh6.String(),
				MeshIPv4: n.mesh4.String(), Endpoints: []string{netip.AddrPortFrom(n.under, 51820).String()}})
		}
		ap := &Applier{WG: m.wg, Interface: rogue.ifname, PrivateKey: rogue.key, ListenPort: 51820, Keepalive: time.Second}
		if _, err := ap.Apply(context.Background(), set); err != nil {
			t.Fatal(err)
		}
		// Both directions, every admitted node, in parallel.
		var wg sync.WaitGroup
		var reached atomic.Int32
		try := func(from *meshNode, to netip.Addr) {
			defer wg.Done()
			if err := from.talk(to, 1500*time.Millisecond); err == nil {
				reached.Add(1)
				t.Errorf("%s reached %v", from.id, to)
			}
		}
		for _, n := range nodes {
			wg.Add(4)
			go try(rogue, n.mesh6)
			go try(rogue, n.mesh4)
			go try(n, rogue.mesh6)
			go try(n, rogue.mesh4)
		}
		wg.Wait()
		// No admitted device knows its key, and WireGuard never completed
		// a handshake with it (responders drop initiations from unknown
		// static keys: whitepaper §5.4.2).
		for _, n := range nodes {
			if slices.Contains(m.peerKeys(t, n.hostNode), rogue.key.PublicKey()) {
				t.Errorf("%s lists the denied node's key", n.id)
			}
		}
		d, err := m.wg.Device(rogue.ifname)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range d.Peers {
			if !p.LastHandshakeTime.IsZero() {
				t.Errorf("denied node completed a handshake with %v", p.PublicKey)
			}
		}
	})

	t.Run("keyd restart keeps the mesh", func(t *testing.T) {
		// A live connection node-1 → node-2 echoes every 20 ms through the
		// whole restart.
		var live net.Conn
		if err := inNS(nodes[0].nsfd, func() (err error) {
			live, err = net.DialTimeout("tcp", netip.AddrPortFrom(nodes[1].mesh6, 7).String(), time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		var ok, failed atomic.Int32
		stopTraffic := make(chan struct{})
		trafficDone := make(chan struct{})
		go func() {
			defer close(trafficDone)
			buf := make([]byte, 5)
			for {
				select {
				case <-stopTraffic:
					return
				case <-time.After(20 * time.Millisecond):
				}
				// Generous: a stall on a loaded machine is not a
				// teardown; a torn-down mesh never answers.
				live.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := live.Write([]byte("ping\n")); err != nil {
					failed.Add(1)
					continue
				}
				if _, err := io.ReadFull(live, buf); err != nil || string(buf) != "ping\n" {
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		}()

		took, err := k.stop()
		if err != nil {
			t.Fatalf("keyd stop: %v", err)
		}
		stopped := time.Now()
		t.Logf("keyd stopped in %v", took.Round(time.Millisecond))
		// Every follower notices keyd is gone and keeps its set.
		if err := eventually(10*time.Second, func() error {
			for _, n := range nodes {
				s, err := n.status()
				if err != nil {
					return err
				}
				if s.PeerSet.Failures == 0 {
					return fmt.Errorf("%s: no failure reported with keyd down", n.id)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := converged(nodes, nodes); err != nil {
			t.Fatalf("keyd down: %v", err)
		}
		// New connections still work while keyd is down.
		for _, a := range nodes {
			for _, b := range others(a, nodes) {
				if err := eventually(5*time.Second, func() error { return a.talk(b.mesh6, 2*time.Second) }); err != nil {
					t.Errorf("keyd down: %s → %s: %v", a.id, b.id, err)
				}
			}
		}
		// Down long enough for several retries with back-off.
		time.Sleep(time.Until(stopped.Add(1500 * time.Millisecond)))
		if err := converged(nodes, nodes); err != nil {
			t.Fatalf("keyd down: %v", err)
		}
		k.start()
		restarted := time.Now()
		t.Logf("keyd down for %v", restarted.Sub(stopped).Round(time.Millisecond))
		// Every follower reaches the restarted keyd again: a fresh
		// answer, no failures, the same revision.
		if err := eventually(15*time.Second, func() error {
			for _, n := range nodes {
				s, err := n.status()
				if err != nil {
					return err
				}
				if !s.PeerSet.LastContact.After(restarted) || s.PeerSet.Failures != 0 {
					return fmt.Errorf("%s: last contact %v, %d failures (%s)", n.id, s.PeerSet.LastContact, s.PeerSet.Failures, s.PeerSet.LastError)
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("followers did not resume after keyd restarted: %v", err)
		}
		t.Logf("followers resumed %v after keyd restarted", time.Since(restarted).Round(time.Millisecond))
		time.Sleep(100 * time.Millisecond)
		close(stopTraffic)
		<-trafficDone
		if failed.Load() != 0 || ok.Load() < 10 {
			t.Errorf("live traffic through the restart: %d round trips, %d failed", ok.Load(), failed.Load())
		}
		if err := converged(nodes, nodes); err != nil {
			t.Errorf("after restart: %v", err)
		}
	})

	t.Run("revocation cuts off within 5 s", func(t *testing.T) {
		revoked, kept := nodes[2], nodes[:2]
		var live net.Conn
		if err := inNS(revoked.nsfd, func() (err error) {
			live, err = net.DialTimeout("tcp", netip.AddrPortFrom(nodes[0].mesh6, 7).String(), time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		start := time.Now()
		if err := k.revoke(ctxFor(t, 20*time.Second), revoked.id); err != nil {
			t.Fatalf("revoke %s: %v", revoked.id, err)
		}
		if err := eventually(5*time.Second, func() error { return converged(kept, kept) }); err != nil {
			t.Fatalf("revoked node still configured on its peers after 5 s: %v", err)
		}
		cut := time.Since(start)
		t.Logf("revocation → cut off on every peer in %v", cut)
		live.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(live, "still there?\n"); err == nil {
			buf := make([]byte, 13)
			if _, err := io.ReadFull(live, buf); err == nil {
				t.Error("the revoked node's open connection still carries data")
			}
		}
		for _, n := range kept {
			if err := revoked.talk(n.mesh6, time.Second); err == nil {
				t.Errorf("the revoked node opened a new connection to %s", n.id)
			}
		}
		if err := eventually(5*time.Second, func() error { return kept[0].talk(kept[1].mesh4, 2*time.Second) }); err != nil {
			t.Errorf("admitted nodes after a revocation: %v", err)
		}
		// keyd no longer serves the revoked node the directory; its meshd
		// reports that and keeps its last set (it never invents one).
		if err := eventually(5*time.Second, func() error {
			s, err := revoked.status()
			if err != nil {
				return err
			}
			if s.PeerSet.Failures == 0 {
				return errors.New("revoked node's follower reports no failure")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
	t.Logf("total %v", time.Since(begin).Round(time.Millisecond))
}
