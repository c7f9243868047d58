package keyd

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/internal/diskkey"
	"github.com/palisade-cc/palisade/keyd/api"
)

// The wire sizes and the derivation's are one contract.
func TestKeySizesAgree(t *testing.T) {
	if api.MasterSecretSize != diskkey.MasterSize || api.DiskKeySize != diskkey.DiskKeySize || api.RecoveryKeySize != diskkey.RecoveryKeySize {
		t.Errorf("api sizes %d/%d/%d, diskkey %d/%d/%d", api.MasterSecretSize, api.DiskKeySize, api.RecoveryKeySize,
			diskkey.MasterSize, diskkey.DiskKeySize, diskkey.RecoveryKeySize)
	}
}

// Every claimed disk gets the owner's recovery key next to keyd's key:
// derived from the master secret with its own label, per node and per
// UUID; a node that claims no disk gets none; keyd stores neither.
func TestAdmitRecoveryKeys(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.db")
	h := newHarness(t, harnessOpts{statePath: state})
	ctx := ctxT(t)
	disks := []string{testDiskA, testDiskB}
	r1, err := h.node("node-1", disks, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := h.node("node-2", []string{testDiskA}, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r1.DiskKeys) != 2 || len(r2.DiskKeys) != 1 {
		t.Fatalf("disk keys: %d and %d, want 2 and 1", len(r1.DiskKeys), len(r2.DiskKeys))
	}
	for i, dk := range r1.DiskKeys {
		want, err := RecoveryKey(h.master, testCluster, "node-1", disks[i])
		if err != nil {
			t.Fatal(err)
		}
		if len(dk.Recovery) != api.RecoveryKeySize || !bytes.Equal(dk.Recovery, want) {
			t.Errorf("disk %s: recovery %x, want %x", dk.UUID, dk.Recovery, want)
		}
		if bytes.Contains(dk.Key, dk.Recovery[:16]) {
			t.Errorf("disk %s: the recovery key overlaps the disk key", dk.UUID)
		}
	}
	if bytes.Equal(r1.DiskKeys[0].Recovery, r1.DiskKeys[1].Recovery) {
		t.Error("two disks of one node share a recovery key")
	}
	if r2.DiskKeys[0].UUID != testDiskA || bytes.Equal(r2.DiskKeys[0].Recovery, r1.DiskKeys[0].Recovery) {
		t.Error("two nodes share the recovery key of one UUID")
	}
	r3, err := h.node("node-3", nil, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r3.DiskKeys) != 0 {
		t.Errorf("a node without disks got %d disk keys", len(r3.DiskKeys))
	}
	db, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*api.AdmitResponse{r1, r2} {
		for _, dk := range r.DiskKeys {
			if bytes.Contains(db, dk.Recovery) || bytes.Contains(db, dk.Key) {
				t.Errorf("disk %s: a key is in keyd's state file", dk.UUID)
			}
		}
	}
}
