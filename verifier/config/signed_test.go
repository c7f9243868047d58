package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/manifest/rekortest"
)

// signedWorld writes a signed manifest (one node and one keyd reference),
// logged in log, as config.references, with the manifest key pinned.
func signedWorld(t *testing.T, log *rekortest.Log) (Config, string) {
	t.Helper()
	dir := t.TempDir()
	c := validConfig(t)
	c.dir, c.References, c.ManifestKey, c.RekorKey = dir, "manifest.dsse", "m.pub.pem", "rekor.pub.pem"
	_, priv, _ := ed25519.GenerateKey(nil)
	pcr := func(b byte) attest.HexBytes { return bytes.Repeat([]byte{b}, 32) }
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "1.0", SecurityVersion: 7,
		Files: map[string]attest.HexBytes{"palisade.efi": pcr(1)},
		References: []attest.Reference{{Profile: "tpm-uefi-sb-off-production", Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: pcr(4), 9: pcr(9), 11: pcr(11)}}}},
		Keyd: []attest.Reference{{Profile: "keyd-tpm", Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{11: pcr(12)}}}}}
	b, err := manifest.Sign(m, priv)
	if err != nil {
		t.Fatal(err)
	}
	env, err := manifest.EnvelopeBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	i, err := log.Add(env, rekortest.PublicKeyPEM(priv.Public()))
	if err != nil {
		t.Fatal(err)
	}
	if b.LogProof, err = log.Entry(i); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(b)
	p := filepath.Join(dir, "manifest.dsse")
	for name, data := range map[string][]byte{"manifest.dsse": raw, "m.pub.pem": rekortest.PublicKeyPEM(priv.Public()), "rekor.pub.pem": log.PublicKeyPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return c, p
}

// TestSignedManifestReferences: config.references may be the signed
// manifest itself; its node and keyd references are read after the
// signature and the Rekor proof verify, as keyd and the nodes do.
func TestSignedManifestReferences(t *testing.T) {
	c, _ := signedWorld(t, rekortest.NewLog())
	r, err := c.ReadReferences()
	if err != nil {
		t.Fatal(err)
	}
	if r.SecurityVersion != 7 || len(r.References) != 2 {
		t.Fatalf("references %+v", r)
	}
	if ref, err := r.Lookup(attest.RoleKeyd, "keyd-tpm"); err != nil || ref == nil {
		t.Errorf("keyd reference: %v", err)
	}
	if ref, err := r.Lookup(attest.RoleNode, "tpm-uefi-sb-off-production"); err != nil || ref == nil {
		t.Errorf("node reference: %v", err)
	}
}

func TestSignedManifestDenied(t *testing.T) {
	t.Run("no rekor key", func(t *testing.T) {
		c, _ := signedWorld(t, rekortest.NewLog())
		c.RekorKey = ""
		if _, err := c.ReadReferences(); err == nil || !strings.Contains(err.Error(), "rekor_key") {
			t.Fatalf("signed manifest without a pinned log: %v", err)
		}
	})
	t.Run("other log", func(t *testing.T) {
		c, _ := signedWorld(t, rekortest.NewLog())
		if err := os.WriteFile(filepath.Join(c.dir, "rekor.pub.pem"), rekortest.NewLog().PublicKeyPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadReferences(); err == nil || !strings.Contains(err.Error(), manifest.ErrLogProof.Error()) {
			t.Fatalf("proof of a log not pinned: %v", err)
		}
	})
	t.Run("other signer", func(t *testing.T) {
		c, _ := signedWorld(t, rekortest.NewLog())
		pub, _, _ := ed25519.GenerateKey(nil)
		if err := os.WriteFile(filepath.Join(c.dir, "m.pub.pem"), rekortest.PublicKeyPEM(pub), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadReferences(); err == nil {
			t.Fatal("manifest signed by a key not pinned was read")
		}
	})
	t.Run("no manifest key", func(t *testing.T) {
		c, _ := signedWorld(t, rekortest.NewLog())
		c.ManifestKey = ""
		if _, err := c.ReadReferences(); err == nil || !strings.Contains(err.Error(), "manifest_key") {
			t.Fatalf("signed manifest without a pinned key: %v", err)
		}
	})
}
