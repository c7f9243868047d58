// Package roots is the configuration section that pins each platform's trust
// anchors, and the verifiers built from it. keyd and the owner's verifier
// read the same section, so they trust exactly the same way.
//
// It is not a trust store and never reaches the network: collateral comes
// only from the configured offline bundles.
package roots

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/boundedfile"
	"os"
	"path/filepath"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
)

// maxFile bounds a roots or chain file: a few certificates.
const maxFile = 4 << 20

// Config pins the roots of each platform; a platform without roots is not
// verified at all, so its peers are denied.
type Config struct {
	// TPMRoots and TPMIntermediates are PEM files of EK CAs.
	TPMRoots         string `json:"tpm_roots,omitempty"`
	TPMIntermediates string `json:"tpm_intermediates,omitempty"`
	// SNP maps an AMD product line ("Milan", "Genoa", "Turin") to its
	// KDS cert_chain files.
	SNP map[string]SNP `json:"sev_snp,omitempty"`
	// SNPCollateralDir is the offline KDS bundle (snp.Collateral.Dir).
	SNPCollateralDir string `json:"sev_snp_collateral_dir,omitempty"`
	// TDXRoot is a PEM file of the Intel SGX root CA (or a test root).
	TDXRoot string `json:"tdx_root,omitempty"`
	// TDXCollateralDir is the offline PCS bundle (tdx.Bundle).
	TDXCollateralDir string `json:"tdx_collateral_dir,omitempty"`
	// TDXAcceptTCB lists TCB statuses accepted besides UpToDate.
	TDXAcceptTCB []string `json:"tdx_accept_tcb,omitempty"`
}

// SNP are the AMD KDS cert_chain files of one product line.
type SNP struct {
	VCEKChain string `json:"vcek_chain"`
	VLEKChain string `json:"vlek_chain,omitempty"`
}

// Validate names the first bad field, as "roots.<field>: …" (callers
// prefix their own section path).
func (c *Config) Validate() error {
	if c.TPMRoots == "" && len(c.SNP) == 0 && c.TDXRoot == "" {
		return errors.New("roots: no platform has roots; set tpm_roots, sev_snp or tdx_root")
	}
	if c.TPMIntermediates != "" && c.TPMRoots == "" {
		return errors.New("roots.tpm_intermediates: set without tpm_roots")
	}
	for prod, s := range c.SNP {
		if prod != "Milan" && prod != "Genoa" && prod != "Turin" {
			return fmt.Errorf("roots.sev_snp[%q]: want Milan, Genoa or Turin", prod)
		}
		if s.VCEKChain == "" {
			return fmt.Errorf("roots.sev_snp[%q].vcek_chain: empty", prod)
		}
	}
	if len(c.SNP) > 0 && c.SNPCollateralDir == "" {
		return errors.New("roots.sev_snp_collateral_dir: empty, but sev_snp roots are set (CRLs come from the offline KDS bundle)")
	}
	if c.TDXRoot != "" && c.TDXCollateralDir == "" {
		return errors.New("roots.tdx_collateral_dir: empty, but tdx_root is set (collateral comes from the offline PCS bundle)")
	}
	return nil
}

// Verifiers builds one verifier per platform that has roots, pinned to
// exactly those roots and reading collateral only from the configured
// directories. Relative paths are resolved against dir ("" leaves them as
// they are).
func (c *Config) Verifiers(dir string) (map[attest.Platform]attest.Verifier, error) {
	path := func(p string) string {
		if dir == "" || p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	out := map[attest.Platform]attest.Verifier{}
	if c.TPMRoots != "" {
		roots, err := certPool(path(c.TPMRoots))
		if err != nil {
			return nil, fmt.Errorf("roots.tpm_roots: %w", err)
		}
		var inter *x509.CertPool
		if c.TPMIntermediates != "" {
			if inter, err = certPool(path(c.TPMIntermediates)); err != nil {
				return nil, fmt.Errorf("roots.tpm_intermediates: %w", err)
			}
		}
		out[attest.PlatformTPM] = tpm.NewVerifier(roots, inter)
	}
	if len(c.SNP) > 0 {
		roots := map[string]*snp.Roots{}
		for prod, files := range c.SNP {
			vcek, err := readFile(path(files.VCEKChain))
			if err != nil {
				return nil, fmt.Errorf("roots.sev_snp[%q].vcek_chain: %w", prod, err)
			}
			var vlek []byte
			if files.VLEKChain != "" {
				if vlek, err = readFile(path(files.VLEKChain)); err != nil {
					return nil, fmt.Errorf("roots.sev_snp[%q].vlek_chain: %w", prod, err)
				}
			}
			if roots[prod], err = snp.ParseRoots(vcek, vlek); err != nil {
				return nil, fmt.Errorf("roots.sev_snp[%q]: %w", prod, err)
			}
		}
		out[attest.PlatformSNP] = &snp.Verifier{Roots: roots, Getter: &snp.Collateral{Dir: path(c.SNPCollateralDir)}}
	}
	if c.TDXRoot != "" {
		pool, err := certPool(path(c.TDXRoot))
		if err != nil {
			return nil, fmt.Errorf("roots.tdx_root: %w", err)
		}
		v := &tdx.Verifier{Roots: pool, Getter: &tdx.Bundle{FS: os.DirFS(path(c.TDXCollateralDir))}, AcceptTCB: c.TDXAcceptTCB}
		if err := v.Validate(); err != nil {
			return nil, fmt.Errorf("roots: tdx: %w", err)
		}
		out[attest.PlatformTDX] = v
	}
	return out, nil
}

// readFile reads at most maxFile bytes and says so if there were more.
func readFile(path string) ([]byte, error) { return boundedfile.Read(path, maxFile) }

// certPool reads a PEM file of at least one certificate.
func certPool(path string) (*x509.CertPool, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}
