package tdx

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/palisade-cc/palisade/internal/attest"
)

// collateral is verified collateral for one PCK certificate.
type collateral struct {
	tcbInfo    pcs.TcbInfo
	qeIdentity pcs.EnclaveIdentity
}

// Bounds on collateral, which is read from a bundle an operator fills.
const maxCollateral = 1 << 20

// getCollateral fetches, authenticates and checks the freshness of the
// collateral of the PCK chain ch (Intel PCS API v4; DCAP Quote Verification
// Library "Collateral" checks), then checks revocation of every certificate
// that vouches for the quote. Signatures must chain to a pinned root: the
// issuer chains PCS ships in headers are used only for their signing
// certificate, never for their root.
func (v *Verifier) getCollateral(ctx context.Context, ch *pckChain, now time.Time) (*collateral, error) {
	getter := v.getter()
	var col collateral

	// TCB info (TDX, v3) for the PCK's FMSPC.
	tcbSigner, raw, err := v.signedDoc(ctx, getter, pcs.TcbInfoURL(ch.fmspc), pcs.TcbInfoIssuerChainPhrase, "tcbInfo", now)
	if err != nil {
		return nil, fmt.Errorf("TCB info: %w", err)
	}
	if err := json.Unmarshal(raw, &col.tcbInfo); err != nil {
		return nil, attest.Denyf(attest.ClassCollateral, "TCB info: %v", err)
	}
	ti := &col.tcbInfo
	if ti.ID != "TDX" || ti.Version != 3 {
		return nil, attest.Denyf(attest.ClassCollateral, "TCB info: id %q version %d, want TDX version 3", ti.ID, ti.Version)
	}
	if err := fresh("TCB info", ti.IssueDate, ti.NextUpdate, now); err != nil {
		return nil, err
	}
	if !strings.EqualFold(ti.Fmspc, ch.fmspc) || !strings.EqualFold(ti.PceID, ch.ext.PCEID) {
		return nil, attest.Denyf(attest.ClassCollateral, "TCB info: FMSPC %q PCE-ID %q, PCK certificate has %q %q",
			ti.Fmspc, ti.PceID, ch.fmspc, ch.ext.PCEID)
	}

	// QE identity (TD_QE, v2).
	qeSigner, raw, err := v.signedDoc(ctx, getter, pcs.QeIdentityURL(), pcs.SgxQeIdentityIssuerChainPhrase, "enclaveIdentity", now)
	if err != nil {
		return nil, fmt.Errorf("QE identity: %w", err)
	}
	if err := json.Unmarshal(raw, &col.qeIdentity); err != nil {
		return nil, attest.Denyf(attest.ClassCollateral, "QE identity: %v", err)
	}
	qi := &col.qeIdentity
	if qi.ID != "TD_QE" || qi.Version != 2 {
		return nil, attest.Denyf(attest.ClassCollateral, "QE identity: id %q version %d, want TD_QE version 2", qi.ID, qi.Version)
	}
	if err := fresh("QE identity", qi.IssueDate, qi.NextUpdate, now); err != nil {
		return nil, err
	}

	// PCK CRL, signed by the (verified) PCK CA, and the root CA CRL, signed
	// by the pinned root (Intel SGX PCK Certificate and CRL Profile §2).
	pckCRL, err := v.crl(ctx, getter, pcs.PckCrlURL(ch.ca), "PCK CRL", ch.intermediate, now)
	if err != nil {
		return nil, err
	}
	rootCRL, err := v.crl(ctx, getter, RootCACRLURL, "root CA CRL", ch.root, now)
	if err != nil {
		return nil, err
	}

	// Revocation (CheckRevocations is always on).
	for _, c := range []struct {
		what string
		crl  *x509.RevocationList
		cert *x509.Certificate
	}{
		{"PCK CA certificate", rootCRL, ch.intermediate},
		{"PCK certificate", pckCRL, ch.pck},
		{"TCB info signing certificate", rootCRL, tcbSigner},
		{"QE identity signing certificate", rootCRL, qeSigner},
	} {
		if revoked(c.crl, c.cert.SerialNumber) {
			return nil, attest.Denyf(attest.ClassRevoked, "%s (serial %s, %q) is on the %s", c.what,
				c.cert.SerialNumber.Text(16), c.cert.Subject.CommonName, crlName(c.crl, pckCRL))
		}
	}
	return &col, nil
}

func crlName(c, pck *x509.RevocationList) string {
	if c == pck {
		return "PCK CRL"
	}
	return "root CA CRL"
}

func revoked(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// fresh checks issueDate ≤ now ≤ nextUpdate.
func fresh(what string, issue, next, now time.Time) error {
	if issue.IsZero() || next.IsZero() {
		return attest.Denyf(attest.ClassCollateral, "%s: issueDate or nextUpdate missing", what)
	}
	if now.Before(issue) {
		return attest.Denyf(attest.ClassCollateral, "%s: not valid before %s (now %s)", what, issue.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	if now.After(next) {
		return attest.Denyf(attest.ClassCollateral, "%s: expired at nextUpdate %s (now %s)", what, next.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return nil
}

func fetch(ctx context.Context, g trust.HTTPSGetter, u string) (map[string][]string, []byte, error) {
	h, body, err := trust.GetWith(ctx, g, u)
	if err != nil {
		return nil, nil, attest.Denyf(attest.ClassCollateral, "get %s: %v", u, err)
	}
	if len(body) == 0 || len(body) > maxCollateral {
		return nil, nil, attest.Denyf(attest.ClassCollateral, "get %s: body of %d bytes, want 1-%d", u, len(body), maxCollateral)
	}
	return h, body, nil
}

// signedDoc fetches a PCS JSON document {"<field>": {...}, "signature": hex}
// and verifies the signature over the exact bytes of <field> with the TCB
// signing certificate from the issuer-chain header, which must chain to a
// pinned root (both once per exact bytes: sigCache). It returns the signing
// certificate and the raw document.
func (v *Verifier) signedDoc(ctx context.Context, g trust.HTTPSGetter, u, header, field string, now time.Time) (*x509.Certificate, []byte, error) {
	h, body, err := fetch(ctx, g, u)
	if err != nil {
		return nil, nil, err
	}
	signer, err := v.tcbSigner(h, header, now)
	if err != nil {
		return nil, nil, err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, attest.Denyf(attest.ClassCollateral, "%s: %v", u, err)
	}
	var sigHex string
	if err := json.Unmarshal(doc["signature"], &sigHex); err != nil {
		return nil, nil, attest.Denyf(attest.ClassCollateral, "%s: signature: %v", u, err)
	}
	raw := doc[field]
	if len(raw) == 0 {
		return nil, nil, attest.Denyf(attest.ClassCollateral, "%s: no %q", u, field)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || len(sig) != 64 {
		return nil, nil, attest.Denyf(attest.ClassCollateral, "%s: signature: want 64 bytes of hex", u)
	}
	k := factKey("doc", signer.Raw, raw, sig)
	if _, ok := v.sigs.get(k); !ok {
		if err := checkRawSig(signer, raw, sig); err != nil {
			return nil, nil, attest.Denyf(attest.ClassChain, "%s: %s signature: %v", u, field, err)
		}
		v.sigs.put(k, true)
	}
	return signer, raw, nil
}

// tcbSigner takes the signing certificate from a PCS issuer-chain header
// and verifies it against the pinned roots (never the header's root).
func (v *Verifier) tcbSigner(h map[string][]string, header string, now time.Time) (*x509.Certificate, error) {
	vals := h[header]
	if len(vals) != 1 {
		return nil, attest.Denyf(attest.ClassCollateral, "issuer chain header %s: %d values, want 1", header, len(vals))
	}
	chain, err := url.QueryUnescape(vals[0])
	if err != nil {
		return nil, attest.Denyf(attest.ClassCollateral, "issuer chain header %s: %v", header, err)
	}
	blk, _ := pem.Decode([]byte(chain))
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, attest.Denyf(attest.ClassCollateral, "issuer chain header %s: no PEM certificate", header)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, attest.Denyf(attest.ClassCollateral, "issuer chain header %s: signing certificate: %v", header, err)
	}
	if cert.Subject.CommonName != "Intel SGX TCB Signing" {
		return nil, attest.Denyf(attest.ClassChain, "collateral signing certificate %q: want \"Intel SGX TCB Signing\"", cert.Subject.CommonName)
	}
	pool := v.roots()
	k := factKey("tcb-signer", poolID(pool), cert.Raw)
	if f, ok := v.sigs.get(k); ok && validAt(f.([]*x509.Certificate), now) == nil {
		return cert, nil
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, attest.Denyf(attest.ClassChain, "collateral signing certificate %q does not chain to a pinned root: %v", cert.Subject.CommonName, err)
	}
	v.sigs.put(k, chains[0])
	return cert, nil
}

// crl fetches a DER CRL and checks its signature by issuer (once per CRL
// and issuer: sigCache) and its dates (every time).
func (v *Verifier) crl(ctx context.Context, g trust.HTTPSGetter, u, what string, issuer *x509.Certificate, now time.Time) (*x509.RevocationList, error) {
	_, body, err := fetch(ctx, g, u)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// The parsed list is shared between verifications: read only.
	k := factKey("crl", issuer.Raw, body)
	var crl *x509.RevocationList
	if f, ok := v.sigs.get(k); ok {
		crl = f.(*x509.RevocationList)
	} else {
		if crl, err = x509.ParseRevocationList(body); err != nil {
			return nil, attest.Denyf(attest.ClassCollateral, "%s: %v", what, err)
		}
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			return nil, attest.Denyf(attest.ClassChain, "%s: not signed by %q: %v", what, issuer.Subject.CommonName, err)
		}
		v.sigs.put(k, crl)
	}
	if err := fresh(what, crl.ThisUpdate, crl.NextUpdate, now); err != nil {
		return nil, err
	}
	return crl, nil
}

// checkRawSig verifies a raw r ‖ s P-256 signature over SHA-256(msg).
func checkRawSig(cert *x509.Certificate, msg, sig []byte) error {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate %q: key is %T, want ECDSA", cert.Subject.CommonName, cert.PublicKey)
	}
	der, err := abi.SignatureToDER(sig)
	if err != nil {
		return err
	}
	h := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pub, h[:], der) {
		return fmt.Errorf("does not verify with %q", cert.Subject.CommonName)
	}
	return nil
}
