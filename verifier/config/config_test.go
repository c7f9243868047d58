package config

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

func validConfig(t *testing.T) Config {
	t.Helper()
	_, vkey, err := note.GenerateKey(nil, "palisade-keyd/c1")
	if err != nil {
		t.Fatal(err)
	}
	return Config{Version: 1, ClusterID: "c1", Keyd: []string{"127.0.0.1:7443"}, References: "r.json", LogKey: vkey,
		OwnerKey: "owner.key", Secret: "s.json", Roots: Roots{SNP: map[string]SNPRoots{"Milan": {VCEKChain: "x.pem"}}, SNPCollateralDir: "col"}}
}

func TestValidate(t *testing.T) {
	c := validConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"config.version", func(c *Config) { c.Version = 2 }},
		{"config.cluster_id", func(c *Config) { c.ClusterID = "Bad_ID" }},
		{"config.keyd", func(c *Config) { c.Keyd = nil }},
		{"config.keyd[0]", func(c *Config) { c.Keyd = []string{"nohostport"} }},
		{"config.references", func(c *Config) { c.References = "" }},
		{"config.log_key", func(c *Config) { c.LogKey = "x+00000000+AAAA" }},
		{"config.owner_key", func(c *Config) { c.OwnerKey = "" }},
		{"config.secret", func(c *Config) { c.Secret = "" }},
		{"config.attest_port", func(c *Config) { c.AttestPort = 70000 }},
		{"config.rekor_key", func(c *Config) { c.RekorKey = "rekor.pub.pem" }},
		{"config.roots", func(c *Config) { c.Roots = Roots{} }},
		{`config.roots.sev_snp["Naples"]`, func(c *Config) { c.Roots.SNP = map[string]SNPRoots{"Naples": {VCEKChain: "x"}} }},
		{"config.roots.sev_snp_collateral_dir", func(c *Config) { c.Roots.SNPCollateralDir = "" }},
		{"config.roots.tdx_collateral_dir", func(c *Config) { c.Roots.TDXRoot = "t.pem" }},
	} {
		c := validConfig(t)
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want an error naming it", tc.field, err)
		}
	}
}

func TestReadImageKeys(t *testing.T) {
	dir := t.TempDir()
	c := validConfig(t)
	c.dir = dir
	if _, err := c.ReadRekorKey(); err == nil || !strings.Contains(err.Error(), "config.rekor_key: empty") {
		t.Fatalf("unset rekor_key: %v", err)
	}
	c.ManifestKey, c.RekorKey = "m.pub.pem", "rekor.pub.pem"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "rekor.pub.pem"), []byte("not pem"), 0o644)
	if _, err := c.ReadRekorKey(); err == nil || !strings.Contains(err.Error(), "config.rekor_key "+filepath.Join(dir, "rekor.pub.pem")) {
		t.Fatalf("bad rekor_key: %v", err)
	}
	if _, err := c.ReadManifestKey(); err == nil || !strings.Contains(err.Error(), "config.manifest_key") {
		t.Fatalf("missing manifest_key file: %v", err)
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	os.WriteFile(filepath.Join(dir, "m.pub.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	if k, err := c.ReadManifestKey(); err != nil || !pub.Equal(k) {
		t.Fatalf("manifest_key: %v", err)
	}
}

func TestDefaultAndComments(t *testing.T) {
	c := validConfig(t)
	b := Default("c1", "10.0.0.5:7443", c.LogKey)
	got, err := Parse(b, t.TempDir())
	if err != nil {
		t.Fatalf("default config: %v\n%s", err, b)
	}
	if got.ClusterID != "c1" || got.Keyd[0] != "10.0.0.5:7443" {
		t.Errorf("default: %+v", got)
	}
	// Without a log key the default names the field to fill in.
	if _, err := Parse(Default("c1", "", ""), ""); err == nil || !strings.Contains(err.Error(), "config.log_key") {
		t.Errorf("default without log key: %v", err)
	}
}

func TestOwnerKeyMode(t *testing.T) {
	c := validConfig(t)
	c.dir = t.TempDir()
	seed := make([]byte, 32)
	p := c.Path(c.OwnerKey)
	if err := WriteExclusive(p, []byte(hex.EncodeToString(seed))); err != nil {
		t.Fatal(err)
	}
	k, err := c.ReadOwnerKey()
	if err != nil || !k.Equal(ed25519.NewKeyFromSeed(seed)) {
		t.Fatalf("owner key: %v", err)
	}
	if err := WriteExclusive(p, nil); err == nil {
		t.Error("WriteExclusive overwrote the owner key")
	}
	os.Chmod(p, 0o644)
	if _, err := c.ReadOwnerKey(); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("world-readable owner key: %v", err)
	}
}

func TestCheckpointState(t *testing.T) {
	c := validConfig(t)
	c.dir = t.TempDir()
	if b, err := c.LastCheckpoint(); b != nil || err != nil {
		t.Fatalf("empty state: %q %v", b, err)
	}
	for _, m := range []string{"one", "two"} {
		if err := c.SaveCheckpoint([]byte(m)); err != nil {
			t.Fatal(err)
		}
		if b, _ := c.LastCheckpoint(); string(b) != m {
			t.Errorf("stored %q, want %q", b, m)
		}
	}
	if ents, _ := os.ReadDir(c.dir); len(ents) != 1 || ents[0].Name() != filepath.Base(CheckpointName) {
		t.Errorf("state dir holds %v", ents)
	}
}

func FuzzParse(f *testing.F) {
	c := Config{Version: 1, ClusterID: "c1", Keyd: []string{"a:1"}}
	b, _ := json.Marshal(c)
	f.Add(b)
	f.Add(Default("c1", "", ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := Parse(b, ""); err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted an invalid config: %v", err)
			}
		}
	})
}

func FuzzParseReferences(f *testing.F) {
	f.Add([]byte(`{"format":1,"security_version":1,"references":[{"role":"node","reference":{"profile":"p","platform":"tpm","tpm":{"pcrs":{"4":"` + strings.Repeat("00", 32) + `"}}}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReferences(b)
		if err != nil {
			return
		}
		for _, rr := range r.References {
			if _, err := r.Lookup(rr.Role, rr.Reference.Profile); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzParseSecret(f *testing.F) {
	f.Add(EncodeSecret("c1", make([]byte, 32)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, _, err := ParseSecret(b); err == nil && len(m) != 32 {
			t.Fatalf("secret of %d bytes", len(m))
		}
	})
}
