package attestd

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/manifest/rekortest"
)

// logServedManifest records the manifest keyd serves in log and writes it
// back with its Rekor entry as the log proof.
func logServedManifest(t *testing.T, w *world, log *rekortest.Log) {
	t.Helper()
	p := filepath.Join(w.dir, "manifest.bundle.json")
	raw, err := os.ReadFile(p)
	must(t, err)
	var b manifest.Bundle
	must(t, json.Unmarshal(raw, &b))
	env, err := manifest.EnvelopeBytes(&b)
	must(t, err)
	i, err := log.Add(env, rekortest.PublicKeyPEM(w.signKey.Public()))
	must(t, err)
	b.LogProof, err = log.Entry(i)
	must(t, err)
	out, err := json.Marshal(&b)
	must(t, err)
	must(t, os.WriteFile(p, out, 0o600))
}

func pinRekor(t *testing.T, w *world, log *rekortest.Log) {
	t.Helper()
	w.cfg.ManifestWithoutLogProof = false
	w.cfg.RekorKeyPath = filepath.Join(w.dir, "rekor.pub")
	must(t, os.WriteFile(w.cfg.RekorKeyPath, log.PublicKeyPEM(), 0o644))
}

// TestJoinManifestRekor: with the log's key pinned, a manifest carrying its
// Rekor inclusion proof is accepted and the node is admitted.
func TestJoinManifestRekor(t *testing.T) {
	w := newWorld(t, worldOpts{})
	log := rekortest.NewLog()
	logServedManifest(t, w, log)
	pinRekor(t, w, log)
	m, _ := w.snpNode()
	if _, err := w.run(m, nil); err != nil {
		t.Fatalf("join with a logged manifest: %v", err)
	}
}

// TestJoinManifestOtherLog: a proof from a log whose key the image does not
// pin is refused before the node sends any evidence.
func TestJoinManifestOtherLog(t *testing.T) {
	w := newWorld(t, worldOpts{})
	logServedManifest(t, w, rekortest.NewLog())
	pinRekor(t, w, rekortest.NewLog())
	w.cfg.Deadline = 2 * time.Second
	w.cfg.BackoffMin, w.cfg.BackoffMax = 300*time.Millisecond, 300*time.Millisecond
	m, ca := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrDeadline) || !errors.Is(err, manifest.ErrLogProof) {
		t.Fatalf("err %v, want ErrDeadline after a log-proof failure", err)
	}
	if ca.n.Load() != 0 {
		t.Fatal("node attested to a keyd whose manifest the pinned log does not prove")
	}
}

// TestRekorKeyExcludesNoProof: a pinned log and the test-only escape hatch
// together are a configuration error.
func TestRekorKeyExcludesNoProof(t *testing.T) {
	c := Config{ManifestKeyPath: "/k", HintsPath: "/h", RunDir: "/r", RekorKeyPath: "/rekor.pub", ManifestWithoutLogProof: true}
	c.SetDefaults()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "rekor-key") {
		t.Fatalf("Validate: %v", err)
	}
}
