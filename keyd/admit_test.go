package keyd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
)

// checkAdmission checks everything an admission response promises: disk
// keys from the master secret, a mesh address in the cluster's prefix, the
// node in the peer set, and a log entry included in a checkpoint signed by
// the log key.
func (h *harness) checkAdmission(ctx context.Context, id string, disks []string, resp *api.AdmitResponse) {
	t := h.t
	t.Helper()
	if len(resp.DiskKeys) != len(disks) {
		t.Fatalf("%d disk keys, want %d", len(resp.DiskKeys), len(disks))
	}
	for i, dk := range resp.DiskKeys {
		want, err := DiskKey(h.master, testCluster, id, disks[i])
		if err != nil {
			t.Fatal(err)
		}
		if dk.UUID != disks[i] || !bytes.Equal(dk.Key, want) || len(dk.Key) != 64 {
			t.Errorf("disk key %d: uuid %s, key %x; want %s, %x", i, dk.UUID, dk.Key, disks[i], want)
		}
	}
	a, err := netip.ParseAddr(resp.MeshAddress)
	if err != nil || !MeshPrefix(testCluster).Contains(a) {
		t.Errorf("mesh address %q not in %s", resp.MeshAddress, MeshPrefix(testCluster))
	}
	if resp.Peers == nil || !inPeers(resp.Peers, id) {
		t.Errorf("peer set %+v lacks %s", resp.Peers, id)
	}
	cp, err := auditlog.VerifyCheckpoint(resp.Checkpoint, testOrigin, h.logV)
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	oc := h.ownerClient()
	es, err := oc.Entries(ctx, resp.LogIndex, resp.LogIndex+1)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := auditlog.ParseRecord(es.Entries[0])
	if err != nil {
		t.Fatal(err)
	}
	if rec.Type != auditlog.TypeAdmission || rec.Node != id {
		t.Errorf("log entry %d: %+v, want the admission of %s", resp.LogIndex, rec, id)
	}
	proof, err := h.k.log.ProveInclusion(ctx, int64(resp.LogIndex), cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	p, err := oc.InclusionProof(ctx, resp.LogIndex, uint64(cp.Size))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(hashes(proof), p.Hashes); diff != "" {
		t.Errorf("served inclusion proof differs (-log +served):\n%s", diff)
	}
	if err := auditlog.VerifyInclusion(cp, int64(resp.LogIndex), es.Entries[0], proof); err != nil {
		t.Errorf("inclusion: %v", err)
	}
}

func TestAdmitSNP(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	disks := []string{testDiskA, testDiskB}
	resp, err := h.node("node-1", disks, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.checkAdmission(ctx, "node-1", disks, resp)
	if resp.MeshIPv4 != "10.77.0.1" {
		t.Errorf("mesh ipv4 %q, want 10.77.0.1", resp.MeshIPv4)
	}
	// A second admission of the same node keeps its keys and addresses.
	again, err := h.node("node-1", disks, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(resp.DiskKeys, again.DiskKeys); diff != "" || again.MeshAddress != resp.MeshAddress || again.MeshIPv4 != resp.MeshIPv4 {
		t.Errorf("re-admission changed keys or addresses: %s %s/%s", diff, again.MeshAddress, again.MeshIPv4)
	}
	nodes, err := h.ownerClient().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 1 || nodes.Nodes[0].NodeID != "node-1" || nodes.Nodes[0].Platform != "sev-snp" || nodes.Nodes[0].LogIndex != again.LogIndex {
		t.Errorf("registry: %+v", nodes)
	}
	if got := h.admitted(); got != 2 {
		t.Errorf("admitted metric %v, want 2", got)
	}
}

func TestLockedUntilInit(t *testing.T) {
	h := newHarness(t, harnessOpts{noInit: true})
	ctx := ctxT(t)
	if _, err := h.node("node-1", nil, nil).Admit(ctx); !errors.Is(err, api.ErrLocked) {
		t.Fatalf("admit before init: %v, want ErrLocked", err)
	}
	oc := h.ownerClient()
	init := &api.InitRequest{ClusterID: testCluster, MasterSecret: h.master, OwnerKey: h.owner.Public().(ed25519.PublicKey)}
	if err := oc.Init(ctx, init); err != nil {
		t.Fatal(err)
	}
	if err := oc.Init(ctx, init); err == nil {
		t.Fatal("second init accepted")
	}
	if _, err := h.node("node-1", nil, nil).Admit(ctx); err != nil {
		t.Fatal(err)
	}
}
