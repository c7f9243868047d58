package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd"
)

func pcr(b byte) attest.HexBytes { return bytes.Repeat([]byte{b}, 32) }

// nodeFixture is a control-plane machine: its image's key and roots, the
// init's hints, a provisioner serving the signed manifest, a TPM holding
// the PCRs of the image's "cp" keyd reference.
type nodeFixture struct {
	n        *node
	key      ed25519.PrivateKey
	manifest *manifest.Manifest
	served   []byte
	status   int
	tpm      map[int][]byte
}

func newNodeFixture(t *testing.T) *nodeFixture {
	t.Helper()
	dir := t.TempDir()
	f := &nodeFixture{status: http.StatusOK, tpm: map[int][]byte{4: pcr(4), 9: pcr(9), 11: pcr(11)}}
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	f.key = key
	der, _ := x509.MarshalPKIXPublicKey(pub)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPath := write("manifest.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	write("roots/tpm.pem", []byte("-"))
	rootsPath := write("roots/roots.json", []byte(`{"tpm_roots": "tpm.pem", "sev_snp": {"Milan": {"vcek_chain": "kds/chain"}}, "sev_snp_collateral_dir": "kds"}`))
	other := attest.Reference{Profile: "cp-sb-on", Platform: attest.PlatformTPM, TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: pcr(40), 9: pcr(9), 11: pcr(11)}}}
	cp := attest.Reference{Profile: "cp", Platform: attest.PlatformTPM, TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: pcr(4), 9: pcr(9), 11: pcr(11)}}}
	f.manifest = &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "v-test", SecurityVersion: 1,
		Files: map[string]attest.HexBytes{"palisade.efi": pcr(1)}, References: []attest.Reference{other, cp}, Keyd: []attest.Reference{other, cp}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/manifest.json" || f.status != http.StatusOK {
			http.Error(w, "no", max(f.status, http.StatusNotFound))
			return
		}
		w.Write(f.served)
	}))
	t.Cleanup(srv.Close)
	hints := write("hints.json", []byte(`{"keyd":["127.0.0.1:7443"],"cluster":"c1","status":"`+srv.URL+`","sources":["dhcp:keyd"]}`))
	f.n = &node{HintsPath: hints, ManifestKeyPath: keyPath, RootsPath: rootsPath, StateDir: filepath.Join(dir, "state"),
		WithoutLogProof: true, FetchTimeout: 300 * time.Millisecond, NodeID: func() string { return "keyd-test" },
		ReadPCRs: func(path string, pcrs []int) (map[int][]byte, error) {
			out := map[int][]byte{}
			for _, p := range pcrs {
				out[p] = f.tpm[p]
			}
			return out, nil
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.n.defaults()
	return f
}

// sign serves the fixture's manifest signed by key.
func (f *nodeFixture) sign(t *testing.T, key ed25519.PrivateKey) {
	t.Helper()
	b, err := manifest.Sign(f.manifest, key)
	if err != nil {
		t.Fatal(err)
	}
	if f.served, err = json.Marshal(b); err != nil {
		t.Fatal(err)
	}
}

func TestNodeConfig(t *testing.T) {
	f := newNodeFixture(t)
	f.sign(t, f.key)
	cfg, err := f.n.config(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClusterID != "c1" || cfg.Profile != "cp" || cfg.NodeID != "keyd-test" || cfg.Listen != ":7443" ||
		cfg.Attester.Platform != attest.PlatformTPM || cfg.Attester.TPMPath != "/dev/tpmrm0" || !cfg.ManifestWithoutLogProof {
		t.Errorf("config %+v", cfg)
	}
	dir := filepath.Dir(f.n.RootsPath)
	if cfg.Roots.TPMRoots != filepath.Join(dir, "tpm.pem") || cfg.Roots.SNP["Milan"].VCEKChain != filepath.Join(dir, "kds/chain") ||
		cfg.Roots.SNPCollateralDir != filepath.Join(dir, "kds") {
		t.Errorf("roots not resolved under %s: %+v", dir, cfg.Roots)
	}
	if !strings.HasPrefix(cfg.StatePath, f.n.StateDir) || !strings.HasPrefix(cfg.LogKeyFile, f.n.StateDir) {
		t.Errorf("state %s, log key %s: want under %s", cfg.StatePath, cfg.LogKeyFile, f.n.StateDir)
	}
	got, err := os.ReadFile(cfg.ManifestPath)
	if err != nil || !bytes.Equal(got, f.served) {
		t.Errorf("manifest at %s: %v (want the served bytes)", cfg.ManifestPath, err)
	}
	// keyd itself accepts what was derived: the manifest file verifies
	// under the key, and the profile is in its keyd section.
	keys, err := keyd.LoadManifestKeys(cfg.ManifestKeys)
	if err != nil {
		t.Fatal(err)
	}
	m, err := keyd.LoadSignedManifest(cfg.ManifestPath, keyd.ManifestOptions{Keys: keys, AllowNoLogProof: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lookup(attest.RoleKeyd, cfg.Profile); err != nil {
		t.Error(err)
	}
}

// Each change of one input from the valid case is refused, naming it.
func TestNodeConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		edit       func(t *testing.T, f *nodeFixture)
	}{
		{"manifest signed by another key", "manifest from", func(t *testing.T, f *nodeFixture) {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			f.sign(t, other)
		}},
		{"tpm matches no keyd reference", "pcr4 is", func(t *testing.T, f *nodeFixture) { f.tpm[4] = pcr(5) }},
		{"keyd section without tpm", "no tpm keyd reference", func(t *testing.T, f *nodeFixture) {
			f.manifest.Keyd = nil
			f.sign(t, f.key)
		}},
		{"manifest not served", "manifest http", func(t *testing.T, f *nodeFixture) { f.status = http.StatusNotFound }},
		{"no cluster hint", "cluster", func(t *testing.T, f *nodeFixture) {
			rewrite(t, f.n.HintsPath, `"cluster":"c1",`, ``)
		}},
		{"no status hint", "status", func(t *testing.T, f *nodeFixture) {
			rewrite(t, f.n.HintsPath, `"status":"http://`, `"x":"http://`)
		}},
		{"no tpm roots", "tpm_roots", func(t *testing.T, f *nodeFixture) {
			rewrite(t, f.n.RootsPath, `"tpm_roots": "tpm.pem", `, ``)
		}},
		{"no log proof waiver and no log key", "manifest log key", func(t *testing.T, f *nodeFixture) { f.n.WithoutLogProof = false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newNodeFixture(t)
			f.sign(t, f.key)
			tc.edit(t, f)
			_, err := f.n.config(context.Background())
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Errorf("config = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func rewrite(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s has no %q", path, old)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}

func FuzzNodeHints(f *testing.F) {
	f.Add([]byte(`{"keyd":["127.0.0.1:7443"],"cluster":"c1","status":"http://10.0.0.1:8080"}`))
	f.Add([]byte(`{"cluster":"c 1","status":"http://x"}`))
	f.Add([]byte(`{"cluster":"c1","status":"file:///etc"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseNodeHints(b)
		if err == nil && (h.Cluster == "" || h.Status == "") {
			t.Fatalf("accepted hints without cluster or status: %+v", h)
		}
	})
}

func FuzzNodeRoots(f *testing.F) {
	f.Add([]byte(`{"tpm_roots": "tpm.pem", "sev_snp": {"Milan": {"vcek_chain": "kds/chain"}}, "sev_snp_collateral_dir": "kds"}`))
	f.Add([]byte(`{"tpm_roots": "/abs.pem", "tdx_root": "r", "tdx_collateral_dir": "p"}`))
	f.Add([]byte(`{"sev_snp": {"Milan": {}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseRoots(b, "/etc/palisade/roots")
		if err != nil {
			return
		}
		for _, p := range []string{c.TPMRoots, c.TPMIntermediates, c.SNPCollateralDir, c.TDXRoot, c.TDXCollateralDir} {
			if p != "" && !filepath.IsAbs(p) {
				t.Fatalf("path %q left relative", p)
			}
		}
	})
}
