package tdx

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"regexp"
	"strings"

	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify/trust"
)

// RootCACRLURL is where Intel publishes the SGX root CA's CRL (the CRL
// distribution point of the Intel SGX Root CA certificate). The verifier
// always asks for this URL; it never follows a URL found in evidence or
// collateral.
const RootCACRLURL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

// Offline collateral bundle layout. A bundle is a directory (any fs.FS) with
// the bodies of Intel PCS v4 responses and the issuer chains PCS sends in
// response headers, one file each:
//
//	tcb-info-<fmspc>.json          GET {TdxBaseURL}/tcb?fmspc=<fmspc>        (body)
//	tcb-info-<fmspc>.chain.pem     its TCB-Info-Issuer-Chain header, PEM, unescaped
//	qe-identity.json               GET {TdxBaseURL}/qe/identity              (body)
//	qe-identity.chain.pem          its SGX-Enclave-Identity-Issuer-Chain header
//	pck-crl-<ca>.der               GET {SgxBaseURL}/pckcrl?ca=<ca>&encoding=der
//	pck-crl-<ca>.chain.pem         its SGX-PCK-CRL-Issuer-Chain header
//	root-ca-crl.der                GET RootCACRLURL
//
// <fmspc> is 12 lower-case hex digits, <ca> is "platform" or "processor".
// Files are fetched once per FMSPC by an operator (or a cron job) with
// network access; a verifier reads them without any.
const (
	QEIdentityFile      = "qe-identity.json"
	QEIdentityChainFile = "qe-identity.chain.pem"
	RootCACRLFile       = "root-ca-crl.der"
)

// TCBInfoFile and TCBInfoChainFile name the TCB info of one FMSPC.
func TCBInfoFile(fmspc string) string      { return "tcb-info-" + fmspc + ".json" }
func TCBInfoChainFile(fmspc string) string { return "tcb-info-" + fmspc + ".chain.pem" }

// PCKCRLFile and PCKCRLChainFile name the PCK CRL of a PCK CA.
func PCKCRLFile(ca string) string      { return "pck-crl-" + ca + ".der" }
func PCKCRLChainFile(ca string) string { return "pck-crl-" + ca + ".chain.pem" }

// Bundle serves collateral from an offline bundle. It implements
// go-tdx-guest's trust.HTTPSGetter, mapping PCS URLs to bundle files, so the
// same bundle feeds this verifier and go-tdx-guest's own tools.
type Bundle struct {
	FS fs.FS
}

var (
	_ trust.HTTPSGetter        = (*Bundle)(nil)
	_ trust.ContextHTTPSGetter = (*Bundle)(nil)

	fmspcRE = regexp.MustCompile(`^[0-9a-f]{12}$`)
	// ErrNotInBundle is returned for a URL the bundle has no file for.
	ErrNotInBundle = errors.New("not in collateral bundle")
)

// Get returns the response headers and body PCS would have sent for u.
func (b *Bundle) Get(u string) (map[string][]string, []byte, error) {
	return b.GetContext(context.Background(), u)
}

// GetContext is Get; reading local files needs no cancellation.
func (b *Bundle) GetContext(_ context.Context, u string) (map[string][]string, []byte, error) {
	body, chain, header, err := b.files(u)
	if err != nil {
		return nil, nil, err
	}
	data, err := fs.ReadFile(b.FS, body)
	if err != nil {
		return nil, nil, fmt.Errorf("collateral bundle: %s for %s: %w", body, u, err)
	}
	h := map[string][]string{}
	if chain != "" {
		pemChain, err := fs.ReadFile(b.FS, chain)
		if err != nil {
			return nil, nil, fmt.Errorf("collateral bundle: %s for %s: %w", chain, u, err)
		}
		// PCS sends the chain URL-escaped in a header (PCS API v4).
		h[header] = []string{url.QueryEscape(string(pemChain))}
	}
	return h, data, nil
}

// files maps a PCS URL to the bundle's body and chain file.
func (b *Bundle) files(u string) (body, chain, header string, err error) {
	if b == nil || b.FS == nil {
		return "", "", "", fmt.Errorf("collateral bundle: none configured")
	}
	if u == RootCACRLURL {
		return RootCACRLFile, "", "", nil
	}
	if u == pcs.QeIdentityURL() {
		return QEIdentityFile, QEIdentityChainFile, pcs.SgxQeIdentityIssuerChainPhrase, nil
	}
	if rest, ok := strings.CutPrefix(u, pcs.TdxBaseURL+"/tcb?fmspc="); ok {
		f := strings.ToLower(rest)
		if !fmspcRE.MatchString(f) {
			return "", "", "", fmt.Errorf("collateral bundle: FMSPC %q: want 12 hex digits", rest)
		}
		return TCBInfoFile(f), TCBInfoChainFile(f), pcs.TcbInfoIssuerChainPhrase, nil
	}
	for _, ca := range []string{"platform", "processor"} {
		if u == pcs.PckCrlURL(ca) {
			return PCKCRLFile(ca), PCKCRLChainFile(ca), pcs.SgxPckCrlIssuerChainPhrase, nil
		}
	}
	return "", "", "", fmt.Errorf("collateral bundle: %s: %w", u, ErrNotInBundle)
}
