package keyd

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// A revoked node leaves the peer set at once: a watcher long-polling the
// peer set sees it gone within a second, and the node's next admission is
// denied.
func TestRevokedNodeLeavesPeerSet(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	for _, id := range []string{"node-1", "node-2"} {
		if _, err := h.node(id, []string{testDiskA}, nil).Admit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	watcher := h.node("node-2", []string{testDiskA}, nil)
	ps, err := watcher.Peers(ctx, 0, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !inPeers(ps, "node-1") {
		t.Fatalf("peer set %+v lacks node-1", ps)
	}
	got := make(chan *api.PeerSet, 1)
	go func() {
		p, err := watcher.Peers(ctx, ps.Revision, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	time.Sleep(50 * time.Millisecond) // let the long poll start waiting
	start := time.Now()
	if err := h.ownerClient().Revoke(ctx, h.ownerRequest(api.ActionRevokeNode, "node-1", 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p == nil || inPeers(p, "node-1") || !inPeers(p, "node-2") || p.Revision <= ps.Revision {
			t.Fatalf("after revocation: %+v", p)
		}
		t.Logf("watcher saw the revocation after %s", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("watcher did not see the revocation within 1 s")
	}
	if _, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx); !errors.Is(err, api.ErrDenied) {
		t.Fatalf("revoked node admitted: %v", err)
	}
	if h.waitDenials(attest.ClassRevoked, 1) != 1 {
		t.Error("revoked node's denial not counted as revoked")
	}
	nodes, err := h.ownerClient().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Nodes {
		if n.Revoked != (n.NodeID == "node-1") {
			t.Errorf("registry: %s revoked=%v", n.NodeID, n.Revoked)
		}
	}
}

// Owner requests are signed, fresh and used once.
func TestOwnerRequestReplayAndForgery(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	oc := h.ownerClient()
	req := h.ownerRequest(api.ActionRevokeNode, "node-9", 0)
	if err := oc.Revoke(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := oc.Revoke(ctx, req); err == nil {
		t.Error("replayed owner request accepted")
	}
	forged := h.ownerRequest(api.ActionRevokeNode, "node-8", 0)
	forged.NodeID = "node-7" // signature covers node-8
	if err := oc.Revoke(ctx, forged); err == nil {
		t.Error("owner request with a changed field accepted")
	}
	old := h.ownerRequest(api.ActionRevokeNode, "node-6", 0)
	old.Timestamp = time.Now().Add(-time.Hour).Unix()
	old.Sign(h.owner)
	if err := oc.Revoke(ctx, old); err == nil {
		t.Error("stale owner request accepted")
	}
}

func TestSwappedDiskReenrol(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	if _, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := h.node("node-1", []string{testDiskSwapped}, nil).Admit(ctx); !errors.Is(err, api.ErrDenied) {
		t.Fatalf("swapped disk: %v, want denied", err)
	}
	if err := h.ownerClient().Reenrol(ctx, h.ownerRequest(api.ActionReenrolDisks, "node-1", 0)); err != nil {
		t.Fatal(err)
	}
	resp, err := h.node("node-1", []string{testDiskSwapped}, nil).Admit(ctx)
	if err != nil {
		t.Fatalf("after re-enrolment: %v", err)
	}
	h.checkAdmission(ctx, "node-1", []string{testDiskSwapped}, resp)
}

func TestManifestRollback(t *testing.T) {
	h := newHarness(t, harnessOpts{secVersion: 5})
	ctx := context.Background()
	older := testManifest(t, 4, RoleReference{attest.RoleNode, h.nodeRef}, RoleReference{attest.RoleKeyd, h.keydRef})
	if err := h.k.AcceptReferences(ctx, older); !errors.Is(err, ErrRollback) {
		t.Fatalf("manifest version 4 after 5: %v, want ErrRollback", err)
	}
	if got := h.k.refs.Load().SecurityVersion(); got != 5 {
		t.Errorf("security version now %d, want 5", got)
	}
	// A restarted keyd on the same state refuses the old manifest too.
	cfg := testConfig()
	_, err := New(ctx, cfg, Options{Store: h.st, Log: h.k.log, References: older, Attester: h.k.atls.Attester,
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: h.verifier}})
	if !errors.Is(err, ErrRollback) {
		t.Fatalf("New with an older manifest: %v, want ErrRollback", err)
	}
	newer := testManifest(t, 6, RoleReference{attest.RoleNode, h.nodeRef}, RoleReference{attest.RoleKeyd, h.keydRef})
	if err := h.k.AcceptReferences(ctx, newer); err != nil {
		t.Fatal(err)
	}
}

// Replica join hands the master secret to a verified keyd-role peer only.
func TestReplicaJoin(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	resp, err := h.keydPeer("keyd-1").ReplicaJoin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.MasterSecret) != string(h.master) || resp.ClusterID != testCluster {
		t.Errorf("replica join: %+v", resp)
	}
	if _, err := h.node("node-1", nil, nil).ReplicaJoin(ctx); !errors.Is(err, api.ErrDenied) {
		t.Errorf("node-role replica join: %v, want denied", err)
	}
	if _, err := h.ownerClient().ReplicaJoin(ctx); !errors.Is(err, api.ErrDenied) {
		t.Errorf("unattested replica join: %v, want denied", err)
	}
}

// A keyd without a seal key forgets the master secret on restart and
// takes it back only by recover with the committed secret.
func TestRecover(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	r1, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.stop()
	k2, err := New(ctx, testConfig(), Options{Store: h.st, Log: h.k.log, References: h.k.refs.Load().References,
		Attester: h.k.atls.Attester, Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: h.verifier}})
	if err != nil {
		t.Fatal(err)
	}
	h.k = k2
	h.start()
	if _, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx); !errors.Is(err, api.ErrLocked) {
		t.Fatalf("admit after restart: %v, want locked", err)
	}
	wrong := make([]byte, api.MasterSecretSize)
	// A locked keyd must not take a new secret by init: that would hand
	// whoever races the owner a master secret of their choosing.
	if err := h.ownerClient().Init(ctx, &api.InitRequest{ClusterID: testCluster, MasterSecret: wrong,
		OwnerKey: h.owner.Public().(ed25519.PublicKey)}); err == nil {
		t.Fatal("init accepted on a restarted, locked keyd")
	}
	if err := h.ownerClient().Recover(ctx, &api.RecoverRequest{MasterSecret: wrong}); err == nil {
		t.Fatal("recover with a wrong secret accepted")
	}
	if err := h.ownerClient().Recover(ctx, &api.RecoverRequest{MasterSecret: h.master}); err != nil {
		t.Fatal(err)
	}
	r2, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(r1.DiskKeys[0].Key) != string(r2.DiskKeys[0].Key) {
		t.Error("disk key changed across restart and recover")
	}
}

// The admission transaction re-checks revocations: a revocation that lands
// between a node's handshake and its admit request still denies it.
func TestAdmitRechecksRevocationAfterHandshake(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  func(h *harness) *api.OwnerRequest
	}{
		{"node", func(h *harness) *api.OwnerRequest { return h.ownerRequest(api.ActionRevokeNode, "node-1", 0) }},
		{"version", func(h *harness) *api.OwnerRequest { return h.ownerRequest(api.ActionRevokeVersion, "", 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{})
			ctx := ctxT(t)
			// What the handshake proved, before the revocation.
			p := peerInfo{claims: nodeClaims("node-1"), verified: &attest.Verified{Platform: attest.PlatformSNP, Profile: snpNodeProfile, HardwareID: "chip"}}
			if _, err := h.k.admit(ctx, p); err != nil {
				t.Fatalf("valid admission: %v", err)
			}
			if err := h.ownerClient().Revoke(ctx, tc.req(h)); err != nil {
				t.Fatal(err)
			}
			_, err := h.k.admit(ctx, p)
			if attest.ClassOf(err) != attest.ClassRevoked {
				t.Fatalf("admit after revocation: %v, want class revoked", err)
			}
		})
	}
}

// A node ID is bound to the hardware of its first admission: another chip
// claiming it would get its disk keys.
func TestNodeBoundToHardware(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	p := peerInfo{claims: nodeClaims("node-1"), verified: &attest.Verified{Platform: attest.PlatformSNP, Profile: snpNodeProfile, HardwareID: "chip-a"}}
	if _, err := h.k.admit(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.verified = &attest.Verified{Platform: attest.PlatformSNP, Profile: snpNodeProfile, HardwareID: "chip-b"}
	if _, err := h.k.admit(ctx, p); attest.ClassOf(err) != attest.ClassPolicy {
		t.Fatalf("node on other hardware: %v, want class policy", err)
	}
	if err := h.ownerClient().Reenrol(ctx, h.ownerRequest(api.ActionReenrolDisks, "node-1", 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.k.admit(ctx, p); err != nil {
		t.Fatalf("after re-enrolment: %v", err)
	}
}

func inPeers(ps *api.PeerSet, id string) bool {
	for i := range ps.Peers {
		if ps.Peers[i].NodeID == id {
			return true
		}
	}
	return false
}
