package main

import (
	"bytes"
	"context"
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

// TestRekorStack publishes real signed manifests to a real Rekor (rekor-server
// on Trillian and MariaDB, scripts/rekor.sh) and verifies them offline with
// the pinned log key; a proof of another entry and an unpinned log key are
// refused. It runs when PALISADE_REKOR_BIN is set and fails if the stack
// is incomplete.
func TestRekorStack(t *testing.T) {
	st := rekortest.StartStack(t)
	w := newWorld(t)
	if err := os.WriteFile(w.logKey, rekortest.PublicKeyPEM(st.LogKey), 0o644); err != nil {
		t.Fatal(err)
	}
	mk, mkPEM, err := readPublicKey(w.pub)
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	p := &publisher{URL: st.URL, HTTP: st.HTTP, LogKey: st.LogKey, ManifestKey: mk, ManifestKeyPEM: mkPEM,
		Wait: 30 * time.Second, Progress: &progress}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	a, b := w.sign(t, "3"), w.sign(t, "4")
	for _, f := range []string{a, b} {
		start := time.Now()
		if err := p.publishFile(ctx, f, f); err != nil {
			t.Fatalf("publish %s: %v\n%s", f, err, progress.String())
		}
		t.Logf("published in %s", time.Since(start).Round(time.Millisecond))
	}
	t.Logf("progress:\n%s", progress.String())
	out, err := verify(t, "--pub", w.pub, "--log-key", w.logKey, "--dir", w.dir, "--last-accepted", "3", a)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !strings.Contains(out, "verified offline with the pinned log key") {
		t.Fatalf("output:\n%s", out)
	}
	t.Log(out)
	// The entry really is Rekor's: its log ID is the pinned key's.
	var ab manifest.Bundle
	raw, _ := os.ReadFile(a)
	json.Unmarshal(raw, &ab)
	e, err := manifest.ParseLogProof(ab.LogProof)
	if err != nil {
		t.Fatal(err)
	}
	if *e.Raw.LogID != rekortest.LogID(st.LogKey) {
		t.Fatalf("logID %s", *e.Raw.LogID)
	}

	// A proof of another entry (b's, from the same log) is refused.
	var bb manifest.Bundle
	raw, _ = os.ReadFile(b)
	json.Unmarshal(raw, &bb)
	ab.LogProof = bb.LogProof
	swapped := filepath.Join(t.TempDir(), "swapped.dsse")
	enc, _ := json.Marshal(&ab)
	os.WriteFile(swapped, enc, 0o644)
	if _, err := verify(t, "--pub", w.pub, "--log-key", w.logKey, swapped); !errors.Is(err, manifest.ErrLogEntry) {
		t.Fatalf("proof of another entry: %v", err)
	}
	// A log key that is not the log's is refused.
	other := filepath.Join(t.TempDir(), "other.pub.pem")
	os.WriteFile(other, rekortest.NewLog().PublicKeyPEM(), 0o644)
	if _, err := verify(t, "--pub", w.pub, "--log-key", other, a); !errors.Is(err, manifest.ErrLogKey) {
		t.Fatalf("unpinned log key: %v", err)
	}
	// Publishing again finds the entry (409) and its proof still verifies.
	if err := p.publishFile(ctx, a, a); err != nil {
		t.Fatalf("republish: %v\n%s", err, progress.String())
	}
	if _, err := verify(t, "--pub", w.pub, "--log-key", w.logKey, a); err != nil {
		t.Fatal(err)
	}
}
