package keyd

import (
	"errors"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// TestShutdownAnswersLongPolls: stopping keyd answers open long polls at
// once (with the current set) instead of letting them hold Shutdown until
// its time-out, which made Serve fail and delayed every restart by 5 s.
func TestShutdownAnswersLongPolls(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	n := h.node("node-1", []string{testDiskA}, nil)
	resp, err := n.Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		ps, err := n.Peers(ctx, resp.PeersRevision, api.MaxPeersWait)
		if err == nil && ps.Revision != resp.PeersRevision {
			err = errors.New("the answer at shutdown is not the current set")
		}
		got <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the poll start waiting
	start := time.Now()
	h.cancel()
	if err := <-h.done; err != nil {
		t.Errorf("Serve with a long poll open: %v", err)
	}
	h.cancel = nil
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s with a long poll open", d)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("long poll at shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("long poll still open after shutdown")
	}
}

// TestPeersOtherKeyDenied: a session whose claims carry another WireGuard
// key than the one keyd registered for the node (an earlier boot's session,
// or anything else attesting under the node's ID) gets no peer set.
func TestPeersOtherKeyDenied(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	if _, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx); err != nil {
		t.Fatal(err)
	}
	other := make([]byte, 32)
	copy(other, "another key")
	c := h.client(h.clientConfig(attest.Claims{NodeID: "node-1", Role: attest.RoleNode, Profile: snpNodeProfile,
		WireGuardKey: other, DiskUUIDs: []string{testDiskA}, Endpoints: []string{"node-1:51820"}},
		&snp.Attester{Transport: &snptest.Transport{Chain: h.chain}}))
	if _, err := c.Peers(ctx, 0, time.Millisecond); !errors.Is(err, api.ErrDenied) {
		t.Fatalf("session with another WireGuard key: %v, want denied", err)
	}
	if _, err := h.node("node-1", []string{testDiskA}, nil).Peers(ctx, 0, time.Millisecond); err != nil {
		t.Fatalf("session with the registered key: %v", err)
	}
}
