package roots

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

func TestValidateNamesField(t *testing.T) {
	for want, c := range map[string]Config{
		"roots: no platform":                {},
		"roots.tpm_intermediates":           {TDXRoot: "r", TDXCollateralDir: "d", TPMIntermediates: "i"},
		`roots.sev_snp["Naples"]`:           {SNP: map[string]SNP{"Naples": {VCEKChain: "c"}}, SNPCollateralDir: "d"},
		`roots.sev_snp["Milan"].vcek_chain`: {SNP: map[string]SNP{"Milan": {}}, SNPCollateralDir: "d"},
		"roots.sev_snp_collateral_dir":      {SNP: map[string]SNP{"Milan": {VCEKChain: "c"}}},
		"roots.tdx_collateral_dir":          {TDXRoot: "r"},
	} {
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	ok := Config{TPMRoots: "t.pem", SNP: map[string]SNP{"Milan": {VCEKChain: "c"}}, SNPCollateralDir: "d", TDXRoot: "r", TDXCollateralDir: "d"}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

// The verifiers built from a configuration trust exactly its roots: TDX
// evidence signed under the configured root verifies, under another test
// root it is denied; relative paths resolve against dir.
func TestVerifiersPinned(t *testing.T) {
	dir := t.TempDir()
	ca, err := tpmtest.NewCA("Roots Test Vendor")
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "tpm.pem"), ca.Root.Raw)
	chain, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := chain.WriteBundle(filepath.Join(dir, "kds"), snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := tdxtest.NewFixture()
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "tdx.pem"), f.PKI.Root.Raw)
	if err := os.Mkdir(filepath.Join(dir, "pcs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tdxtest.WriteDir(filepath.Join(dir, "pcs"), f.Bundle); err != nil {
		t.Fatal(err)
	}
	c := Config{
		TPMRoots:         "tpm.pem",
		SNP:              map[string]SNP{"Milan": {VCEKChain: "kds/kdsintf.amd.com/vcek/v1/Milan/cert_chain"}},
		SNPCollateralDir: "kds",
		TDXRoot:          "tdx.pem",
		TDXCollateralDir: "pcs",
	}
	vs, err := c.Verifiers(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range attest.Platforms {
		if vs[p] == nil {
			t.Errorf("no %s verifier", p)
		}
	}
	b := tdxtest.Binding(1)
	ev, err := f.Evidence(b)
	if err != nil {
		t.Fatal(err)
	}
	in := attest.Input{Binding: b, Reference: f.Reference()}
	if _, err := vs[attest.PlatformTDX].Verify(context.Background(), ev, in); err != nil {
		t.Fatalf("evidence under the configured root: %v", err)
	}
	other, err := tdxtest.NewFixture()
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "tdx.pem"), other.PKI.Root.Raw)
	vs, err = c.Verifiers(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vs[attest.PlatformTDX].Verify(context.Background(), ev, in); attest.ClassOf(err) != attest.ClassChain {
		t.Fatalf("evidence under an unconfigured root: %v, want a chain denial", err)
	}

	// Without dir, a relative path is taken as it is (here: not found).
	if _, err := c.Verifiers(""); err == nil || !strings.Contains(err.Error(), "roots.tpm_roots") {
		t.Errorf("relative path without dir: %v", err)
	}
}

func TestReadBounds(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content []byte
		want    string
	}{
		"huge.pem":  {make([]byte, maxFile+1), "larger than"},
		"empty.pem": {[]byte("not pem"), "no PEM certificate"},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), tc.content, 0o644); err != nil {
			t.Fatal(err)
		}
		c := Config{TPMRoots: name}
		if _, err := c.Verifiers(dir); err == nil || !strings.Contains(err.Error(), "roots.tpm_roots") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want roots.tpm_roots … %s", name, err, tc.want)
		}
	}
}

func writePEM(t *testing.T, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}
