package meshd

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/keyd/api"
)

// fakeWG is an in-memory WireGuard device with wgctrl's configuration
// semantics (wgtypes.Config docs): a test double of the kernel/UAPI device.
type fakeWG struct {
	mu      sync.Mutex
	dev     wgtypes.Device
	configs []wgtypes.Config
	fail    error
}

func (f *fakeWG) Device(name string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dev
	d.Name = name
	d.Peers = append([]wgtypes.Peer(nil), f.dev.Peers...)
	return &d, nil
}

func (f *fakeWG) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.configs = append(f.configs, cfg)
	if cfg.PrivateKey != nil {
		f.dev.PrivateKey, f.dev.PublicKey = *cfg.PrivateKey, cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		f.dev.ListenPort = *cfg.ListenPort
	}
	if cfg.ReplacePeers {
		f.dev.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := -1
		for j, p := range f.dev.Peers {
			if p.PublicKey == pc.PublicKey {
				i = j
			}
		}
		switch {
		case pc.Remove:
			if i >= 0 {
				f.dev.Peers = append(f.dev.Peers[:i], f.dev.Peers[i+1:]...)
			}
			continue
		case i < 0 && pc.UpdateOnly:
			continue
		case i < 0:
			f.dev.Peers = append(f.dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey})
			i = len(f.dev.Peers) - 1
		}
		p := &f.dev.Peers[i]
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
	}
	return nil
}

func (f *fakeWG) peers() map[wgtypes.Key]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[wgtypes.Key]string{}
	for _, p := range f.dev.Peers {
		s := ""
		for _, a := range p.AllowedIPs {
			s += a.String() + " "
		}
		if p.Endpoint != nil {
			s += "@" + p.Endpoint.String()
		}
		out[p.PublicKey] = s
	}
	return out
}

func newKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func peer(id string, k wgtypes.Key, n int, ep string) api.Peer {
	pub := k.PublicKey()
	p := api.Peer{NodeID: id, WireGuardKey: pub[:],
		MeshAddress: "fd00:1:2:3::" + strconv.Itoa(n), MeshIPv4: "10.9.0." + strconv.Itoa(n)}
	if ep != "" {
		p.Endpoints = []string{ep}
	}
	return p
}

func TestApplyDiff(t *testing.T) {
	self, a, b, c := newKey(t), newKey(t), newKey(t), newKey(t)
	stranger := newKey(t)
	wg := &fakeWG{}
	ap := &Applier{WG: wg, Interface: "wgt", PrivateKey: self, ListenPort: 51820, Keepalive: 25 * time.Second}
	ctx := context.Background()

	// 1: self and two peers; the device starts with a peer nobody listed.
	wg.dev.Peers = []wgtypes.Peer{{PublicKey: stranger.PublicKey()}}
	set := &api.PeerSet{Revision: 1, Peers: []api.Peer{peer("self", self, 1, "192.0.2.1:51820"), peer("a", a, 2, "192.0.2.2:51820"), peer("b", b, 3, "")}}
	ch, err := ap.Apply(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Change{Added: 2, Removed: 1}, ch); diff != "" {
		t.Errorf("first apply (-want +got):\n%s", diff)
	}
	want := map[wgtypes.Key]string{
		a.PublicKey(): "fd00:1:2:3::2/128 10.9.0.2/32 @192.0.2.2:51820",
		b.PublicKey(): "fd00:1:2:3::3/128 10.9.0.3/32 ",
	}
	if diff := cmp.Diff(want, wg.peers()); diff != "" {
		t.Errorf("device after first apply (-want +got):\n%s", diff)
	}
	if wg.dev.PrivateKey != self || wg.dev.ListenPort != 51820 {
		t.Errorf("device key/port not set: %v %d", wg.dev.PublicKey, wg.dev.ListenPort)
	}

	// 2: the same set again changes nothing and configures nothing.
	n := len(wg.configs)
	if ch, err := ap.Apply(ctx, set); err != nil || ch != (Change{}) || len(wg.configs) != n {
		t.Errorf("re-apply: change %+v err %v, %d configure calls, want none", ch, err, len(wg.configs)-n)
	}

	// 3: the peer roamed; an unchanged set must not undo it.
	roamed := &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 4444}
	for i := range wg.dev.Peers {
		if wg.dev.Peers[i].PublicKey == a.PublicKey() {
			wg.dev.Peers[i].Endpoint = roamed
		}
	}
	if ch, err := ap.Apply(ctx, set); err != nil || ch != (Change{}) {
		t.Errorf("apply after roaming: %+v %v, want no change", ch, err)
	}

	// 3b: a pre-shared key someone else set on a is dropped.
	for i := range wg.dev.Peers {
		if wg.dev.Peers[i].PublicKey == a.PublicKey() {
			wg.dev.Peers[i].PresharedKey = newKey(t)
		}
	}
	if ch, err := ap.Apply(ctx, set); err != nil || ch != (Change{Updated: 1}) {
		t.Errorf("apply over a foreign pre-shared key: %+v %v, want one update", ch, err)
	}
	for _, p := range wg.dev.Peers {
		if p.PresharedKey != (wgtypes.Key{}) {
			t.Errorf("peer %v keeps a pre-shared key meshd did not set", p.PublicKey)
		}
	}

	// 4: b revoked, c admitted, a's IPv4 changed: one remove, one add,
	// one update; a's session is kept (update-only, no remove).
	set2 := &api.PeerSet{Revision: 2, Peers: []api.Peer{peer("self", self, 1, ""), peer("a", a, 2, "192.0.2.2:51820"), peer("c", c, 4, "192.0.2.4:51820")}}
	set2.Peers[1].MeshIPv4 = "10.9.0.20"
	n = len(wg.configs)
	ch, err = ap.Apply(ctx, set2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Change{Added: 1, Removed: 1, Updated: 1}, ch); diff != "" {
		t.Errorf("second set (-want +got):\n%s", diff)
	}
	last := wg.configs[n]
	if last.ReplacePeers {
		t.Error("apply replaced all peers: that drops every session")
	}
	for _, pc := range last.Peers {
		if pc.PublicKey == a.PublicKey() && (!pc.UpdateOnly || pc.Remove || pc.Endpoint != nil) {
			t.Errorf("update of a: %+v, want update-only without endpoint", pc)
		}
	}
	want = map[wgtypes.Key]string{
		a.PublicKey(): "fd00:1:2:3::2/128 10.9.0.20/32 @198.51.100.7:4444",
		c.PublicKey(): "fd00:1:2:3::4/128 10.9.0.4/32 @192.0.2.4:51820",
	}
	if diff := cmp.Diff(want, wg.peers()); diff != "" {
		t.Errorf("device after second set (-want +got):\n%s", diff)
	}

	// 5: an empty set removes everyone.
	if _, err := ap.Apply(ctx, &api.PeerSet{Revision: 3}); err != nil {
		t.Fatal(err)
	}
	if got := wg.peers(); len(got) != 0 {
		t.Errorf("empty set left peers %v", got)
	}
}

func TestApplyRefusesMalformedSet(t *testing.T) {
	self, a, b := newKey(t), newKey(t), newKey(t)
	good := func() *api.PeerSet {
		return &api.PeerSet{Revision: 5, Peers: []api.Peer{peer("self", self, 1, ""), peer("a", a, 2, "192.0.2.2:1"), peer("b", b, 3, "")}}
	}
	for name, mut := range map[string]func(*api.PeerSet){
		"short key":      func(s *api.PeerSet) { s.Peers[1].WireGuardKey = s.Peers[1].WireGuardKey[:31] },
		"zero key":       func(s *api.PeerSet) { s.Peers[1].WireGuardKey = make([]byte, 32) },
		"duplicate key":  func(s *api.PeerSet) { s.Peers[2].WireGuardKey = s.Peers[1].WireGuardKey },
		"duplicate id":   func(s *api.PeerSet) { s.Peers[2].NodeID = "a" },
		"empty id":       func(s *api.PeerSet) { s.Peers[2].NodeID = "" },
		"v4 mesh addr":   func(s *api.PeerSet) { s.Peers[1].MeshAddress = "10.0.0.1" },
		"bad mesh addr":  func(s *api.PeerSet) { s.Peers[1].MeshAddress = "fd00::1/64" },
		"shared addr":    func(s *api.PeerSet) { s.Peers[2].MeshAddress = s.Peers[1].MeshAddress },
		"v6 as ipv4":     func(s *api.PeerSet) { s.Peers[1].MeshIPv4 = "fd00::9" },
		"shared ipv4":    func(s *api.PeerSet) { s.Peers[2].MeshIPv4 = s.Peers[1].MeshIPv4 },
		"bad endpoint":   func(s *api.PeerSet) { s.Peers[1].Endpoints = []string{"host.example:51820"} },
		"port 0":         func(s *api.PeerSet) { s.Peers[1].Endpoints = []string{"192.0.2.2:0"} },
		"bad 2nd endpnt": func(s *api.PeerSet) { s.Peers[1].Endpoints = append(s.Peers[1].Endpoints, "x") },
	} {
		t.Run(name, func(t *testing.T) {
			wg := &fakeWG{}
			ap := &Applier{WG: wg, Interface: "wgt", PrivateKey: self}
			if _, err := ap.Apply(context.Background(), good()); err != nil {
				t.Fatalf("valid set: %v", err)
			}
			before := wg.peers()
			s := good()
			mut(s)
			if _, err := ap.Apply(context.Background(), s); err == nil {
				t.Fatal("malformed set applied")
			}
			if diff := cmp.Diff(before, wg.peers()); diff != "" {
				t.Errorf("a refused set changed the device (-before +after):\n%s", diff)
			}
		})
	}
}

// fakeKeyd is an httptest server speaking keyd/api's /v1/peers wire format:
// a test double of keyd's transport for the follower's unit tests.
type fakeKeyd struct {
	mu      sync.Mutex
	set     api.PeerSet
	changed chan struct{}
	down    bool
	denied  bool
	srv     *httptest.Server
}

func newFakeKeyd(t *testing.T) *fakeKeyd {
	t.Helper()
	k := &fakeKeyd{changed: make(chan struct{})}
	k.srv = httptest.NewServer(http.HandlerFunc(k.serve))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *fakeKeyd) client() *api.Client {
	return &api.Client{HTTP: k.srv.Client(), Base: k.srv.URL}
}

func (k *fakeKeyd) update(fn func(*api.PeerSet)) {
	k.mu.Lock()
	fn(&k.set)
	k.set.Revision++
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
}

func (k *fakeKeyd) setDown(down, denied bool) {
	k.mu.Lock()
	k.down, k.denied = down, denied
	k.mu.Unlock()
}

func (k *fakeKeyd) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != api.PathPeers {
		http.NotFound(w, r)
		return
	}
	since, err := strconv.ParseUint(r.URL.Query().Get("since"), 10, 64)
	if err != nil {
		http.Error(w, `{"error":"bad since"}`, http.StatusBadRequest)
		return
	}
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	deadline := time.After(wait)
	for {
		k.mu.Lock()
		down, denied, set, ch := k.down, k.denied, k.set, k.changed
		set.Peers = append([]api.Peer(nil), k.set.Peers...)
		k.mu.Unlock()
		switch {
		case down:
			w.Header().Set(api.HeaderRetryAfter, "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(api.Error{Error: api.ErrTextRetryLater})
			return
		case denied:
			w.WriteHeader(http.StatusForbidden)
			json.NewEncoder(w).Encode(api.Error{Error: api.ErrTextDenied})
			return
		case set.Revision > since:
			json.NewEncoder(w).Encode(set)
			return
		}
		select {
		case <-ch:
		case <-deadline:
			json.NewEncoder(w).Encode(set)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestFollower(t *testing.T) {
	self, a, b := newKey(t), newKey(t), newKey(t)
	k := newFakeKeyd(t)
	k.update(func(s *api.PeerSet) {
		s.Peers = []api.Peer{peer("self", self, 1, ""), peer("a", a, 2, "192.0.2.2:51820")}
	})
	wg := &fakeWG{}
	ap := &Applier{WG: wg, Interface: "wgt", PrivateKey: self}
	now := time.Unix(1000, 0)
	var clock sync.Mutex
	f := &Follower{Source: k.client(), Wait: 200 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		StaleAfter: time.Minute, Now: func() time.Time { clock.Lock(); defer clock.Unlock(); return now }}
	if !f.Status().Stale {
		t.Error("a follower that never reached keyd is not stale")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- f.Run(ctx, func(ctx context.Context, s *api.PeerSet) error { _, err := ap.Apply(ctx, s); return err })
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	has := func(keys ...wgtypes.Key) func() bool {
		return func() bool {
			p := wg.peers()
			if len(p) != len(keys) {
				return false
			}
			for _, k := range keys {
				if _, ok := p[k.PublicKey()]; !ok {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "first set", has(a))
	if s := f.Status(); s.Stale || s.Revision != 1 || s.Peers != 2 {
		t.Errorf("status after first set: %+v", s)
	}

	// A change is applied from the long poll, well before Wait elapses.
	start := time.Now()
	k.update(func(s *api.PeerSet) { s.Peers = append(s.Peers, peer("b", b, 3, "")) })
	waitFor(t, "b added", has(a, b))
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Logf("change took %v (long poll should wake at once)", d)
	}

	// keyd unreachable: the last set is kept, the follower turns stale.
	k.setDown(true, false)
	waitFor(t, "failures", func() bool { return f.Status().Failures >= 3 })
	clock.Lock()
	now = now.Add(2 * time.Minute)
	clock.Unlock()
	if s := f.Status(); !s.Stale || s.LastError == "" || s.Revision != 2 {
		t.Errorf("status while keyd is down: %+v, want stale with revision 2", s)
	}
	if !has(a, b)() {
		t.Errorf("peers while keyd is down: %v, want a and b kept", wg.peers())
	}
	// Denied (this node revoked): also keeps the set, never invents one.
	k.setDown(false, true)
	time.Sleep(30 * time.Millisecond)
	if !has(a, b)() {
		t.Errorf("peers while denied: %v", wg.peers())
	}

	// keyd back: a revocation made meanwhile is applied, staleness clears.
	k.update(func(s *api.PeerSet) { s.Peers = s.Peers[:2] })
	k.setDown(false, false)
	waitFor(t, "b removed", has(a))
	if s := f.Status(); s.Stale || s.Failures != 0 || s.Revision != 3 {
		t.Errorf("status after recovery: %+v", s)
	}

	// A malformed set from keyd is not applied; the device keeps a.
	k.update(func(s *api.PeerSet) { s.Peers[1].WireGuardKey = []byte{1} })
	waitFor(t, "refusal", func() bool { return f.Status().Failures > 0 })
	if !has(a)() || f.Status().Revision != 3 {
		t.Errorf("malformed set changed state: peers %v status %+v", wg.peers(), f.Status())
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "wg.key")
	k1, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || k1 != k2 {
		t.Errorf("reload: %v, same key %v", err, k1 == k2)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(p); err == nil {
		t.Error("a group-readable key file was accepted")
	}
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(bad); err == nil {
		t.Error("garbage key file accepted")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("temporary files left: %v", ents)
	}
}
