package snp

import (
	"bytes"
	"crypto/x509"
	"fmt"

	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify/trust"
)

// Roots are the pinned AMD certificates of one product line: the ARK
// (self-signed root), the ASK that signs VCEKs and, optionally, the ASVK
// that signs VLEKs. They are the only trust anchors the Verifier uses.
type Roots struct {
	ARK  *x509.Certificate
	ASK  *x509.Certificate
	ASVK *x509.Certificate // nil: no VLEK accepted for this product
}

// ParseRoots reads the KDS cert_chain documents of a product (PEM, ASK or
// ASVK first, then ARK; KDS spec §4.2): vcekChain is required, vlekChain
// may be nil. Both must name the same ARK.
func ParseRoots(vcekChain, vlekChain []byte) (*Roots, error) {
	ask, ark, err := parseChain("vcek cert_chain", vcekChain)
	if err != nil {
		return nil, err
	}
	r := &Roots{ARK: ark, ASK: ask}
	if vlekChain != nil {
		asvk, ark2, err := parseChain("vlek cert_chain", vlekChain)
		if err != nil {
			return nil, err
		}
		if !ark2.Equal(ark) {
			return nil, fmt.Errorf("vlek cert_chain: ARK differs from the vcek cert_chain's ARK")
		}
		r.ASVK = asvk
	}
	return r, nil
}

func parseChain(name string, pems []byte) (ica, ark *x509.Certificate, err error) {
	// Trailing white space is not content (AMD's Turin VLEK chain ends in "\n\n").
	icaDER, arkDER, err := kds.ParseProductCertChain(bytes.TrimSpace(pems))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	if ica, err = x509.ParseCertificate(icaDER); err != nil {
		return nil, nil, fmt.Errorf("%s: intermediate: %w", name, err)
	}
	if ark, err = x509.ParseCertificate(arkDER); err != nil {
		return nil, nil, fmt.Errorf("%s: ARK: %w", name, err)
	}
	return ica, ark, nil
}

// AMDRoots returns AMD's production roots for Milan, Genoa and Turin, as
// published by the KDS and embedded in go-sev-guest (verify/trust).
func AMDRoots() (map[string]*Roots, error) {
	out := map[string]*Roots{}
	for _, p := range []struct {
		name       string
		vcek, vlek []byte
	}{
		{"Milan", trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
		{"Genoa", trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
		{"Turin", trust.AskArkTurinVcekBytes, trust.AskArkTurinVlekBytes},
	} {
		r, err := ParseRoots(p.vcek, p.vlek)
		if err != nil {
			return nil, fmt.Errorf("embedded AMD roots for %s: %w", p.name, err)
		}
		out[p.name] = r
	}
	return out, nil
}
