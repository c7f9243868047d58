package keyd

import (
	"crypto"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/manifest/rekortest"
)

// TestManifestLogKey: with config.manifest_log_key keyd accepts a manifest
// only with a Rekor proof of that manifest by the pinned log.
func TestManifestLogKey(t *testing.T) {
	key := testManifestKey(t)
	node, kd := testRefs(t)
	log := rekortest.NewLog()
	dir := t.TempDir()
	logKey := filepath.Join(dir, "rekor.pub.pem")
	if err := os.WriteFile(logKey, log.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	keys := []crypto.PublicKey{key.Public()}
	v, err := LoadManifestLogVerifier(logKey, keys)
	if err != nil {
		t.Fatal(err)
	}
	proven := func(version uint64) ([]byte, *manifest.Bundle) {
		var b manifest.Bundle
		if err := json.Unmarshal(signedBundle(t, key, version, []attest.Reference{node}, []attest.Reference{kd}, nil), &b); err != nil {
			t.Fatal(err)
		}
		env, _ := manifest.EnvelopeBytes(&b)
		i, err := log.Add(env, rekortest.PublicKeyPEM(key.Public()))
		if err != nil {
			t.Fatal(err)
		}
		if b.LogProof, err = log.Entry(i); err != nil {
			t.Fatal(err)
		}
		enc, _ := json.Marshal(&b)
		return enc, &b
	}
	o := ManifestOptions{Keys: keys, Log: v, Logger: slog.New(slog.DiscardHandler)}
	good, gb := proven(2)
	s, err := ParseSignedManifest(good, o)
	if err != nil {
		t.Fatal(err)
	}
	if s.LogStatus() != manifest.LogVerified {
		t.Fatalf("log status %q", s.LogStatus())
	}
	_, other := proven(3)
	gb.LogProof = other.LogProof
	swapped, _ := json.Marshal(gb)
	if _, err := ParseSignedManifest(swapped, o); !errors.Is(err, manifest.ErrLogEntry) || attest.ClassOf(err) != attest.ClassChain {
		t.Fatalf("proof of another manifest: %v", err)
	}
	gb.LogProof = nil
	bare, _ := json.Marshal(gb)
	if _, err := ParseSignedManifest(bare, o); !errors.Is(err, manifest.ErrNoLogProof) {
		t.Fatalf("no proof: %v", err)
	}
	// Another log's key pinned: denied.
	os.WriteFile(logKey, rekortest.NewLog().PublicKeyPEM(), 0o644)
	v2, err := LoadManifestLogVerifier(logKey, keys)
	if err != nil {
		t.Fatal(err)
	}
	o.Log = v2
	if _, err := ParseSignedManifest(good, o); !errors.Is(err, manifest.ErrLogKey) {
		t.Fatalf("unpinned log: %v", err)
	}
	// Errors name the field.
	if _, err := LoadManifestLogVerifier(filepath.Join(dir, "missing.pem"), keys); err == nil || !strings.Contains(err.Error(), "config.manifest_log_key") {
		t.Fatalf("missing file: %v", err)
	}
	os.WriteFile(logKey, []byte("junk"), 0o644)
	if _, err := LoadManifestLogVerifier(logKey, keys); err == nil || !strings.Contains(err.Error(), "config.manifest_log_key "+logKey) {
		t.Fatalf("junk file: %v", err)
	}
	cfg := testConfig()
	cfg.ManifestLogKey, cfg.ManifestWithoutLogProof = logKey, true
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "config.manifest_log_key") {
		t.Fatalf("log key and waiver together: %v", err)
	}
	cfg.ManifestWithoutLogProof = false
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}
