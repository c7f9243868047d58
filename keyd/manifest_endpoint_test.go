package keyd

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// serveManifest restarts h's keyd with config.manifest_path = path (the
// harness's keyd is built from an in-memory manifest and "unused" paths).
func (h *harness) serveManifest(path string) {
	h.t.Helper()
	h.stop()
	h.k.cfg.ManifestPath = path
	h.start()
}

// unverifyingClient is what a booting node uses before it can judge keyd:
// it neither attests nor verifies (attestd fetches the manifest this way).
func (h *harness) unverifyingClient() *api.Client {
	h.t.Helper()
	return h.client(&atls.Config{ClusterID: testCluster, AllowUnattestedPeer: true,
		Claims: attest.Claims{NodeID: "booting", Role: attest.RoleNode, Profile: "unattested"}})
}

// TestManifestEndpoint: GET /v1/manifest returns the configured bundle byte
// for byte, to a peer that neither attests nor verifies and to an attested
// node alike; a missing file is an internal error, not a crash.
func TestManifestEndpoint(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := ctxT(t)
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	ref := h.chain.Reference()
	ref.Profile = snpNodeProfile
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "1", SecurityVersion: 1,
		Files: map[string]attest.HexBytes{"palisade.efi": bytes.Repeat([]byte{1}, 32)}, References: []attest.Reference{*ref}, Keyd: []attest.Reference{*h.keydRef}}
	b, err := manifest.Sign(m, key)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "manifest.bundle.json")
	if err := os.WriteFile(path, enc, 0o600); err != nil {
		t.Fatal(err)
	}
	h.serveManifest(path)

	for name, c := range map[string]*api.Client{
		"unattested": h.unverifyingClient(),
		"node":       h.node("node-m", []string{testDiskA}, nil),
	} {
		got, err := c.Manifest(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, enc) {
			t.Fatalf("%s: served %d bytes that differ from the %d-byte bundle", name, len(got), len(enc))
		}
		if _, err := manifest.Verify(got, manifest.Options{Keys: []crypto.PublicKey{key.Public()}, AllowNoLogProof: true}); err != nil {
			t.Fatalf("%s: served bundle does not verify: %v", name, err)
		}
	}

	// The unattested session still reaches nothing secret.
	if _, err := h.unverifyingClient().Admit(ctx); !errors.Is(err, api.ErrDenied) {
		t.Fatalf("unattested admit: %v, want ErrDenied", err)
	}

	h.serveManifest(filepath.Join(t.TempDir(), "missing.json"))
	if _, err := h.unverifyingClient().Manifest(ctx); err == nil || errors.Is(err, api.ErrDenied) {
		t.Fatalf("missing manifest file: %v, want an internal error", err)
	}
}
