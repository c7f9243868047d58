package keyd

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/manifest"
)

func testManifestKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signedBundle signs a manifest listing node and keyd references, after
// mutate (nil: none) had its way with it.
func signedBundle(t testing.TB, key ed25519.PrivateKey, version uint64, node, keyd []attest.Reference, mutate func(*manifest.Manifest)) []byte {
	t.Helper()
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "v-test", SecurityVersion: version,
		Files:      map[string]attest.HexBytes{"palisade.efi": bytes.Repeat([]byte{1}, 32)},
		References: node, Keyd: keyd}
	if mutate != nil {
		mutate(m)
	}
	b, err := manifest.Sign(m, key)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

func testRefs(t testing.TB) (node, keyd attest.Reference) {
	t.Helper()
	c, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node, keyd = *c.Reference(), *c.Reference()
	node.Profile, keyd.Profile = "sev-snp-node", "sev-snp-keyd"
	return node, keyd
}

// acceptLog stands in for the Rekor verifier: it accepts the proof "ok".
type acceptLog struct{}

func (acceptLog) VerifyLogProof(_ []byte, p json.RawMessage) error {
	if string(p) != `"ok"` {
		return errors.New("inclusion proof does not verify")
	}
	return nil
}

func withLogProof(t testing.TB, bundle []byte, proof string) []byte {
	t.Helper()
	var b manifest.Bundle
	if err := json.Unmarshal(bundle, &b); err != nil {
		t.Fatal(err)
	}
	b.LogProof = json.RawMessage(proof)
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSignedManifest(t *testing.T) {
	key := testManifestKey(t)
	node, kd := testRefs(t)
	bundle := signedBundle(t, key, 3, []attest.Reference{node}, []attest.Reference{kd}, nil)
	var logs bytes.Buffer
	s, err := ParseSignedManifest(bundle, ManifestOptions{Keys: []crypto.PublicKey{key.Public()}, AllowNoLogProof: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if s.SecurityVersion() != 3 || s.LogStatus() != manifest.LogMissing {
		t.Errorf("version %d, log %q", s.SecurityVersion(), s.LogStatus())
	}
	if id, _ := manifest.KeyID(key.Public()); s.KeyID() != id {
		t.Errorf("key id %s, want %s", s.KeyID(), id)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "WITHOUT A TRANSPARENCY-LOG PROOF") {
		t.Errorf("accepting without a log proof was not logged loudly: %q", logs.String())
	}
	for _, c := range []struct {
		role    attest.Role
		profile string
		want    *attest.Reference
	}{{attest.RoleNode, node.Profile, &node}, {attest.RoleKeyd, kd.Profile, &kd}} {
		got, err := s.Lookup(c.role, c.profile)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(c.want, got); d != "" {
			t.Errorf("%s %s (-want +got):\n%s", c.role, c.profile, d)
		}
	}
	// A role only gets its own section: a node cannot pass as keyd with a
	// node profile, nor keyd's profile admit a node.
	if _, err := s.Lookup(attest.RoleKeyd, node.Profile); err == nil {
		t.Error("node profile found under the keyd role")
	}
	if _, err := s.Lookup(attest.RoleNode, kd.Profile); err == nil {
		t.Error("keyd profile found under the node role")
	}

	// With a log verifier and a proof nothing is waived, nothing logged.
	logs.Reset()
	s, err = ParseSignedManifest(withLogProof(t, bundle, `"ok"`), ManifestOptions{Keys: []crypto.PublicKey{key.Public()}, Log: acceptLog{},
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if s.LogStatus() != manifest.LogVerified || logs.Len() != 0 {
		t.Errorf("log %q, logged %q", s.LogStatus(), logs.String())
	}
}

// TestSignedManifestFile goes through the files keyd is configured with:
// the bundle images sign writes and the PEM key images keygen writes.
func TestSignedManifestFile(t *testing.T) {
	dir := t.TempDir()
	key := testManifestKey(t)
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, "manifest.pub.pem")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	node, kd := testRefs(t)
	path := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(path, signedBundle(t, key, 1, []attest.Reference{node}, []attest.Reference{kd}, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadManifestKeys([]string{pub})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSignedManifest(path, ManifestOptions{Keys: keys, AllowNoLogProof: true, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadManifestKeys([]string{path}); err == nil || !strings.Contains(err.Error(), "manifest_keys[0]") {
		t.Errorf("a bundle as key: %v, want an error naming manifest_keys[0]", err)
	}
}

// TestSignedManifestAdmits installs a signed manifest into a running keyd:
// nodes are admitted against it, and an older signed one is refused by the
// store's rollback check.
func TestSignedManifestAdmits(t *testing.T) {
	h := newHarness(t, harnessOpts{secVersion: 5})
	ctx := ctxT(t)
	key := testManifestKey(t)
	o := ManifestOptions{Keys: []crypto.PublicKey{key.Public()}, AllowNoLogProof: true, Logger: slog.New(slog.DiscardHandler)}
	newer, err := ParseSignedManifest(signedBundle(t, key, 6, []attest.Reference{*h.nodeRef}, []attest.Reference{*h.keydRef}, nil), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.k.AcceptReferences(ctx, newer); err != nil {
		t.Fatal(err)
	}
	resp, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.checkAdmission(ctx, "node-1", []string{testDiskA}, resp)
	older, err := ParseSignedManifest(signedBundle(t, key, 5, []attest.Reference{*h.nodeRef}, []attest.Reference{*h.keydRef}, nil), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.k.AcceptReferences(context.Background(), older); !errors.Is(err, ErrRollback) {
		t.Fatalf("signed manifest 5 after 6: %v, want ErrRollback", err)
	}
	if v := h.k.refs.Load().SecurityVersion(); v != 6 {
		t.Errorf("security version %d after a refused rollback, want 6", v)
	}
}

func TestDenyManifest(t *testing.T) {
	key := testManifestKey(t)
	node, kd := testRefs(t)
	refs := func() ([]attest.Reference, []attest.Reference) {
		return []attest.Reference{node}, []attest.Reference{kd}
	}
	valid := func(t *testing.T) ([]byte, ManifestOptions) {
		t.Helper()
		n, k := refs()
		b := signedBundle(t, key, 4, n, k, nil)
		o := ManifestOptions{Keys: []crypto.PublicKey{key.Public()}, LastAccepted: 4, AllowNoLogProof: true, Logger: slog.New(slog.DiscardHandler)}
		if _, err := ParseSignedManifest(b, o); err != nil {
			t.Fatalf("valid manifest denied: %v", err)
		}
		return b, o
	}
	deny := func(t *testing.T, b []byte, o ManifestOptions, class attest.Class, target error) {
		t.Helper()
		s, err := ParseSignedManifest(b, o)
		if err == nil {
			t.Fatalf("accepted: security version %d", s.SecurityVersion())
		}
		if c := attest.ClassOf(err); c != class {
			t.Errorf("class %q, want %q: %v", c, class, err)
		}
		if target != nil && !errors.Is(err, target) {
			t.Errorf("err %v, want %v", err, target)
		}
	}
	t.Run("chain/other-key", func(t *testing.T) {
		_, o := valid(t)
		n, k := refs()
		deny(t, signedBundle(t, testManifestKey(t), 4, n, k, nil), o, attest.ClassChain, manifest.ErrSignature)
	})
	t.Run("chain/tampered-payload", func(t *testing.T) {
		b, o := valid(t)
		var bu manifest.Bundle
		if err := json.Unmarshal(b, &bu); err != nil {
			t.Fatal(err)
		}
		bu.DSSE.Payload = bytes.Replace(bu.DSSE.Payload, []byte(`"security_version":4`), []byte(`"security_version":9`), 1)
		tb, _ := json.Marshal(bu)
		deny(t, tb, o, attest.ClassChain, manifest.ErrSignature)
	})
	t.Run("malformed/unsigned-plain-json", func(t *testing.T) {
		_, o := valid(t)
		nr := node
		plain, _ := json.Marshal(Manifest{Format: ManifestFormat, Version: 9, References: []RoleReference{{attest.RoleNode, &nr}}})
		deny(t, plain, o, attest.ClassMalformed, manifest.ErrMalformed)
	})
	t.Run("malformed/unsigned-envelope", func(t *testing.T) {
		b, o := valid(t)
		var bu manifest.Bundle
		if err := json.Unmarshal(b, &bu); err != nil {
			t.Fatal(err)
		}
		bu.DSSE.Signatures = nil
		ub, _ := json.Marshal(bu)
		deny(t, ub, o, attest.ClassMalformed, manifest.ErrMalformed)
	})
	t.Run("tcb/rollback", func(t *testing.T) {
		_, o := valid(t)
		n, k := refs()
		deny(t, signedBundle(t, key, 3, n, k, nil), o, attest.ClassTCB, manifest.ErrRollback)
	})
	t.Run("malformed/security-version-0", func(t *testing.T) {
		_, o := valid(t)
		o.LastAccepted = 0
		n, k := refs()
		deny(t, signedBundle(t, key, 0, n, k, nil), o, attest.ClassMalformed, nil)
	})
	t.Run("chain/no-log-proof", func(t *testing.T) {
		b, o := valid(t)
		o.AllowNoLogProof = false
		deny(t, b, o, attest.ClassChain, manifest.ErrNoLogProof)
	})
	t.Run("chain/bad-log-proof", func(t *testing.T) {
		b, o := valid(t)
		o.AllowNoLogProof, o.Log = false, acceptLog{}
		deny(t, withLogProof(t, b, `"forged"`), o, attest.ClassChain, manifest.ErrLogProof)
	})
	t.Run("internal/no-pinned-key", func(t *testing.T) {
		b, o := valid(t)
		o.Keys = nil
		deny(t, b, o, attest.ClassInternal, nil)
	})
}

// TestConfigManifest: keyd cannot be configured without pinned manifest
// keys; the waiver of the log proof is a separate, explicit field.
func TestConfigManifest(t *testing.T) {
	cfg := testConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if cfg.ManifestWithoutLogProof {
		t.Error("the log-proof waiver is on by default")
	}
	cfg.ManifestKeys = nil
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "config.manifest_keys") {
		t.Errorf("no manifest keys: %v, want an error naming config.manifest_keys", err)
	}
	cfg.ManifestKeys = []string{""}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "config.manifest_keys[0]") {
		t.Errorf("empty key path: %v, want an error naming config.manifest_keys[0]", err)
	}
}

// FuzzParseSignedManifest: a manifest bundle is outside bytes.
func FuzzParseSignedManifest(f *testing.F) {
	// A fixed key: every fuzz worker rebuilds this setup, and the seeds
	// must verify in each of them.
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	node, kd := testRefs(f)
	good := signedBundle(f, key, 2, []attest.Reference{node}, []attest.Reference{kd}, nil)
	f.Add(good)
	f.Add(withLogProof(f, good, `"ok"`))
	f.Add([]byte(`{"dsse":{"payloadType":"application/vnd.palisade.manifest+json","payload":"e30=","signatures":[{"keyid":"","sig":""}]}}`))
	f.Add([]byte(`{}`))
	o := ManifestOptions{Keys: []crypto.PublicKey{key.Public()}, Log: acceptLog{}, Logger: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSignedManifest(b, o)
		if err != nil {
			if attest.ClassOf(err) == attest.ClassInternal {
				t.Fatalf("denial without a class: %v", err)
			}
			return
		}
		if s.SecurityVersion() == 0 || s.LogStatus() != manifest.LogVerified {
			t.Fatalf("accepted version %d, log %q", s.SecurityVersion(), s.LogStatus())
		}
		for _, r := range s.m.References {
			if _, err := s.Lookup(attest.RoleNode, r.Profile); err != nil {
				t.Fatal(err)
			}
		}
	})
}
