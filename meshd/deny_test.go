package meshd

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/keyd/api"
)

// TestDeny: each subtest starts from a valid set that applies, changes one
// thing, and checks meshd keeps the device to keyd's verdict.
func TestDeny(t *testing.T) {
	self, a, b := newKey(t), newKey(t), newKey(t)
	valid := func() *api.PeerSet {
		return &api.PeerSet{Revision: 7, Peers: []api.Peer{peer("self", self, 1, ""), peer("a", a, 2, "192.0.2.2:51820"), peer("b", b, 3, "192.0.2.3:51820")}}
	}
	setup := func(t *testing.T) (*fakeWG, *Applier) {
		t.Helper()
		wg := &fakeWG{}
		ap := &Applier{WG: wg, Interface: "wgt", PrivateKey: self}
		if _, err := ap.Apply(context.Background(), valid()); err != nil {
			t.Fatalf("valid set: %v", err)
		}
		if got := wg.peers(); len(got) != 2 {
			t.Fatalf("valid set gave peers %v, want a and b", got)
		}
		return wg, ap
	}
	t.Run("unlisted-peer", func(t *testing.T) {
		wg, ap := setup(t)
		rogue := newKey(t)
		wg.ConfigureDevice("wgt", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: rogue.PublicKey(), AllowedIPs: ipNets(nil)}}})
		if _, err := ap.Apply(context.Background(), valid()); err != nil {
			t.Fatal(err)
		}
		if _, ok := wg.peers()[rogue.PublicKey()]; ok {
			t.Error("a peer keyd does not list stays on the device")
		}
	})
	t.Run("revoked-peer", func(t *testing.T) {
		wg, ap := setup(t)
		s := valid()
		s.Revision++
		s.Peers = s.Peers[:2]
		if _, err := ap.Apply(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		if _, ok := wg.peers()[b.PublicKey()]; ok {
			t.Error("a revoked peer stays on the device")
		}
	})
	t.Run("self-listed", func(t *testing.T) {
		wg, _ := setup(t)
		if _, ok := wg.peers()[self.PublicKey()]; ok {
			t.Error("the node is its own peer: its mesh address would route into the tunnel")
		}
	})
	for name, mut := range map[string]func(*api.PeerSet){
		"address-hijack":  func(s *api.PeerSet) { s.Peers[2].MeshAddress = s.Peers[1].MeshAddress },
		"key-hijack":      func(s *api.PeerSet) { s.Peers[2].WireGuardKey = s.Peers[1].WireGuardKey },
		"malformed-key":   func(s *api.PeerSet) { s.Peers[2].WireGuardKey = s.Peers[2].WireGuardKey[:16] },
		"malformed-addr":  func(s *api.PeerSet) { s.Peers[2].MeshAddress = "::/0" },
		"ipv4-not-ipv4":   func(s *api.PeerSet) { s.Peers[2].MeshIPv4 = "0.0.0.0/0" },
		"duplicate-node":  func(s *api.PeerSet) { s.Peers[2].NodeID = s.Peers[1].NodeID },
		"hostname-endpnt": func(s *api.PeerSet) { s.Peers[2].Endpoints = []string{"evil.example:51820"} },
	} {
		t.Run(name, func(t *testing.T) {
			wg, ap := setup(t)
			before := wg.peers()
			s := valid()
			s.Revision++
			mut(s)
			if _, err := ap.Apply(context.Background(), s); err == nil {
				t.Fatal("set applied")
			}
			if got := wg.peers(); len(got) != len(before) {
				t.Errorf("a refused set changed the device: %v", got)
			}
		})
	}
	t.Run("key-file-readable", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "wg.key")
		if _, err := LoadOrCreateKey(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateKey(p); err == nil {
			t.Error("a world-readable private key was used")
		}
	})
}

// FuzzPeerSet feeds keyd's /v1/peers body through the decoder and the set
// check; whatever is accepted must yield a diff that never removes a listed
// peer nor adds an unlisted one.
func FuzzPeerSet(f *testing.F) {
	k1, _ := wgtypes.ParseKey("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
	k2, _ := wgtypes.ParseKey("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=")
	for _, s := range []api.PeerSet{
		{Revision: 1, Peers: []api.Peer{{NodeID: "a", WireGuardKey: k1[:], MeshAddress: "fd00::1", MeshIPv4: "10.0.0.1", Endpoints: []string{"192.0.2.1:51820"}}}},
		{Revision: 2, Peers: []api.Peer{{NodeID: "a", WireGuardKey: k1[:], MeshAddress: "fd00::1"}, {NodeID: "b", WireGuardKey: k2[:], MeshAddress: "fd00::2", Endpoints: []string{"[2001:db8::1]:1"}}}},
	} {
		b, _ := json.Marshal(s)
		f.Add(b)
	}
	f.Add([]byte(`{"revision":3,"peers":[{"node_id":"x","wireguard_key":"AAAA","mesh_address":"::ffff:1.2.3.4"}]}`))
	self, _ := wgtypes.ParseKey("GBNwJtmsBbqJEXDVmHXcQqAkzzEkkc6DzPQtF1A4+3w=")
	f.Fuzz(func(t *testing.T, body []byte) {
		var s api.PeerSet
		if json.Unmarshal(body, &s) != nil {
			return
		}
		want, err := desiredSet(&s, self.PublicKey())
		if err != nil {
			return
		}
		cur := []wgtypes.Peer{{PublicKey: k2}}
		for _, pc := range diff(cur, want, nil, 0) {
			_, listed := want[pc.PublicKey]
			if pc.Remove == listed {
				t.Fatalf("diff %+v for a peer listed=%v", pc, listed)
			}
		}
	})
}

// BenchmarkConverge1000 is one apply of a change to a 1,000-peer set (one
// peer revoked, one admitted) against a device that has the old set.
func BenchmarkConverge1000(b *testing.B) {
	self, _ := wgtypes.GeneratePrivateKey()
	mk := func(n int) api.Peer {
		k, _ := wgtypes.GeneratePrivateKey()
		pub := k.PublicKey()
		return api.Peer{NodeID: "n" + itoa(n), WireGuardKey: pub[:], MeshAddress: "fd00::" + hex4(n), Endpoints: []string{"192.0.2.1:" + itoa(1000+n)}}
	}
	base := make([]api.Peer, 1000)
	for i := range base {
		base[i] = mk(i)
	}
	s1 := &api.PeerSet{Revision: 1, Peers: base}
	s2 := &api.PeerSet{Revision: 2, Peers: append(append([]api.Peer(nil), base[1:]...), mk(5000))}
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		wg := &fakeWG{}
		ap := &Applier{WG: wg, Interface: "wgt", PrivateKey: self}
		if _, err := ap.Apply(context.Background(), s1); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		ch, err := ap.Apply(context.Background(), s2)
		if err != nil || ch != (Change{Added: 1, Removed: 1}) {
			b.Fatalf("%+v %v", ch, err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
func hex4(n int) string { return strconv.FormatInt(int64(n), 16) }
