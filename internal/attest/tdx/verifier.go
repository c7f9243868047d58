package tdx

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/palisade-cc/palisade/internal/attest"
)

// DefaultBundleDir is where the production verifier reads its offline
// collateral bundle (layout: see Bundle).
const DefaultBundleDir = "/var/lib/palisade/tdx-collateral"

//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

var intelRoots = sync.OnceValue(func() *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(intelRootPEM) {
		return nil
	}
	return p
})

// IntelRoots is a pool holding only the Intel SGX Root CA (the same
// certificate go-tdx-guest embeds), the production pin.
func IntelRoots() *x509.CertPool { return intelRoots() }

// TD_ATTRIBUTES bits (Intel TDX Module ABI spec, Table "TD_ATTRIBUTES").
const (
	attrDebug         = 1 << 0
	attrSeptVEDisable = 1 << 28
)

// Verifier verifies TDX evidence: quote v4 chain to a pinned Intel root,
// collateral from an offline bundle, TCB and QE status, TD policy, binding
// and measurements including the CC event log replay.
type Verifier struct {
	// Roots are the pinned roots. nil pins the Intel SGX Root CA; the root in
	// the evidence is never trusted.
	Roots *x509.CertPool
	// Getter serves collateral by PCS URL; nil reads the bundle in
	// DefaultBundleDir. Nothing reaches the network unless a network getter
	// (trust.DefaultHTTPSGetter()) is configured here explicitly.
	Getter trust.HTTPSGetter
	// Now is the verification time; nil is time.Now.
	Now func() time.Time
	// AcceptTCB lists TCB statuses accepted besides UpToDate, for the TDX
	// TCB, the TDX module and the QE (e.g. "SWHardeningNeeded"). "Revoked"
	// is never accepted.
	AcceptTCB []string

	sigs sigCache // collateral signatures that verified
}

var _ attest.Verifier = (*Verifier)(nil)

// Validate checks the configuration.
func (v *Verifier) Validate() error {
	for i, s := range v.AcceptTCB {
		var st pcs.TcbComponentStatus
		if err := st.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
			return fmt.Errorf("tdx verifier: accept_tcb[%d] %q: not a TCB status", i, s)
		}
		if st == pcs.TcbComponentStatusRevoked {
			return fmt.Errorf("tdx verifier: accept_tcb[%d]: %q is never acceptable", i, s)
		}
	}
	if v.roots() == nil {
		return fmt.Errorf("tdx verifier: no pinned roots")
	}
	return nil
}

func (v *Verifier) roots() *x509.CertPool {
	if v.Roots != nil {
		return v.Roots
	}
	return IntelRoots()
}

func (v *Verifier) getter() trust.HTTPSGetter {
	if v.Getter != nil {
		return v.Getter
	}
	return &Bundle{FS: os.DirFS(DefaultBundleDir)}
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Platform implements attest.Verifier.
func (v *Verifier) Platform() attest.Platform { return attest.PlatformTDX }

// Challenge implements attest.Verifier: TDX needs no challenge step, the
// binding carries the nonce.
func (v *Verifier) Challenge([]byte) (send, keep []byte, err error) { return nil, nil, nil }

// pckChain is the quote's PCK chain after it was verified to a pinned root.
type pckChain struct {
	pck, intermediate, root *x509.Certificate
	ext                     *pcs.PckExtensions
	fmspc, ca               string
}

// Verify implements attest.Verifier, in the order of ARCHITECTURE §4.
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (out *attest.Verified, err error) {
	// Certificate and collateral parsing happens in libraries too; whatever
	// panics on hostile input is a denial, never a crash.
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, attest.Denyf(attest.ClassMalformed, "tdx verify: panic on input: %v", r)
		}
	}()
	ref := in.Reference
	if ref == nil || ref.Platform != attest.PlatformTDX || ref.TDX == nil {
		return nil, attest.Denyf(attest.ClassInternal, "tdx verify: reference is not a TDX reference")
	}
	if err := ref.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if err := v.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if err := ev.Check(attest.PlatformTDX); err != nil {
		return nil, err
	}
	for name := range ev.Blobs {
		if name != BlobQuote && name != BlobCCEL {
			return nil, attest.Denyf(attest.ClassMalformed, "evidence: unknown blob %q (want %q, %q)", name, BlobQuote, BlobCCEL)
		}
	}
	rawQuote, err := ev.Blob(BlobQuote)
	if err != nil {
		return nil, err
	}
	ccel, err := ev.Blob(BlobCCEL)
	if err != nil {
		return nil, err
	}
	q, err := ParseQuote(rawQuote)
	if err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}
	now := v.now()

	// 1. Chain of trust: PCK chain to a pinned root, QE report signed by the
	// PCK, attestation key certified by the QE report, quote signed by it.
	ch, err := v.checkChain(ctx, q, now)
	if err != nil {
		return nil, err
	}
	// 2. Collateral, revocation, TCB and QE identity.
	col, err := v.getCollateral(ctx, ch, now)
	if err != nil {
		return nil, err
	}
	body := q.GetTdQuoteBody()
	if err := v.checkQE(q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport(), &col.qeIdentity); err != nil {
		return nil, err
	}
	status, err := v.tcbStatus(&col.tcbInfo, body, ch.ext)
	if err != nil {
		return nil, err
	}
	t := ref.TDX
	if err := atLeast("TEE_TCB_SVN", body.GetTeeTcbSvn(), t.MinTEETCBSVN); err != nil {
		return nil, err
	}

	// 3. Platform policy: TD attributes and XFAM.
	if err := checkPolicy(body, t); err != nil {
		return nil, err
	}

	// 4. Binding.
	want := in.Binding.SHA512()
	if subtle.ConstantTimeCompare(body.GetReportData(), want[:]) != 1 {
		return nil, attest.Denyf(attest.ClassBinding, "REPORT_DATA %x does not commit to this session (want %x)", body.GetReportData(), want)
	}

	// 5. Measurements.
	if err := checkMeasurements(body, t, ccel); err != nil {
		return nil, err
	}

	hwid := strings.ToLower(ch.ext.FMSPC + ch.ext.PPID)
	m := map[string]string{"mrtd": hex.EncodeToString(body.GetMrTd())}
	for i, r := range body.GetRtmrs() {
		m[fmt.Sprintf("rtmr%d", i)] = hex.EncodeToString(r)
	}
	return &attest.Verified{Platform: attest.PlatformTDX, Profile: ref.Profile, HardwareID: hwid,
		TCB: status, Measurements: m}, nil
}

// ParseQuote parses a raw quote v4 (DCAP Quote Generation API Appendix A).
// It never panics: go-tdx-guest's abi slices without bounds checks on some
// malformed inputs, so parsing runs under recover. Bytes after the signed
// data are allowed only as zero padding.
func ParseQuote(raw []byte) (q *pb.QuoteV4, err error) {
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("quote: parser panic: %v", r)
		}
	}()
	if len(raw) < abi.QuoteMinSize {
		return nil, fmt.Errorf("quote: %d bytes, a quote v4 has at least %d", len(raw), abi.QuoteMinSize)
	}
	if v := binary.LittleEndian.Uint16(raw); v != abi.QuoteVersion {
		return nil, fmt.Errorf("quote: version %d, want %d", v, abi.QuoteVersion)
	}
	p, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("quote: %v", err)
	}
	q, ok := p.(*pb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("quote: parsed as %T, want a v4 quote", p)
	}
	if len(bytes.Trim(q.GetExtraBytes(), "\x00")) != 0 {
		return nil, fmt.Errorf("quote: %d bytes after the signed data", len(q.GetExtraBytes()))
	}
	return q, nil
}

// checkChain verifies the quote's signatures and its PCK chain to a pinned
// root. The chain is first verified here against the pinned pool (to learn
// which pinned root it ends in, for the root CA CRL); then go-tdx-guest's
// verify runs with TrustedRoots set to the same pool, checking the chain
// profile (Intel names, P-256/SHA-256, validity), the QE report signature by
// the PCK key, QE REPORT_DATA = SHA-256(attestation key ‖ QE auth data) and
// the quote signature by the attestation key. Its collateral path
// (GetCollateral/CheckRevocations) is not used: see getCollateral.
func (v *Verifier) checkChain(ctx context.Context, q *pb.QuoteV4, now time.Time) (*pckChain, error) {
	c, err := verify.ExtractChainFromQuote(q)
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "quote: PCK certificate chain: %v", err)
	}
	pool := v.roots()
	inter := x509.NewCertPool()
	inter.AddCert(c.IntermediateCertificate)
	chains, err := c.PCKCertificate.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, attest.Denyf(attest.ClassChain, "PCK certificate %q does not chain to a pinned root: %v", c.PCKCertificate.Subject.CommonName, err)
	}
	path := chains[0]
	if len(path) != 3 || !path[1].Equal(c.IntermediateCertificate) {
		return nil, attest.Denyf(attest.ClassChain, "PCK certificate chain: %d certificates to the pinned root, want PCK ← PCK CA ← root", len(path))
	}
	root := path[2]
	if !root.Equal(c.RootCertificate) {
		return nil, attest.Denyf(attest.ClassChain, "PCK certificate chain: the root in the evidence is not the pinned root %q", root.Subject.CommonName)
	}
	opts := &verify.Options{TrustedRoots: pool, Now: &verify.TimeSet{PckCertChain: now, TcbInfo: now,
		QeIdentity: now, PckCrl: now, RootCaCrl: now}}
	if err := verify.TdxQuoteContext(ctx, q, opts); err != nil {
		return nil, attest.Denyf(attest.ClassChain, "quote signature chain: %v", err)
	}
	ext, err := pcs.PckCertificateExtensions(c.PCKCertificate)
	if err != nil {
		return nil, attest.Denyf(attest.ClassChain, "PCK certificate SGX extensions: %v", err)
	}
	fmspc := strings.ToLower(ext.FMSPC)
	if !fmspcRE.MatchString(fmspc) {
		return nil, attest.Denyf(attest.ClassChain, "PCK certificate FMSPC %q: want 12 hex digits", ext.FMSPC)
	}
	var ca string
	switch c.PCKCertificate.Issuer.CommonName {
	case "Intel SGX PCK Platform CA":
		ca = "platform"
	case "Intel SGX PCK Processor CA":
		ca = "processor"
	default:
		return nil, attest.Denyf(attest.ClassChain, "PCK certificate issuer %q is not a PCK CA", c.PCKCertificate.Issuer.CommonName)
	}
	return &pckChain{pck: c.PCKCertificate, intermediate: c.IntermediateCertificate, root: root,
		ext: ext, fmspc: fmspc, ca: ca}, nil
}

// atLeast checks have[i] ≥ min[i] for every component.
func atLeast(what string, have, minimum []byte) error {
	if len(have) != len(minimum) {
		return attest.Denyf(attest.ClassTCB, "%s: %d bytes, reference has %d", what, len(have), len(minimum))
	}
	for i := range have {
		if have[i] < minimum[i] {
			return attest.Denyf(attest.ClassTCB, "%s %x: component %d is %d, reference minimum %d", what, have, i, have[i], minimum[i])
		}
	}
	return nil
}

// checkPolicy checks TD_ATTRIBUTES and XFAM. DEBUG is denied even when the
// reference names it: go-tdx-guest accepts a debug TD whenever attributes
// are not pinned, and a debug TD's memory is readable by the host.
func checkPolicy(body *pb.TDQuoteBody, t *attest.TDXReference) error {
	attrs := binary.LittleEndian.Uint64(body.GetTdAttributes())
	if attrs&attrDebug != 0 {
		return attest.Denyf(attest.ClassPolicy, "TD_ATTRIBUTES %x: DEBUG (bit 0) set", body.GetTdAttributes())
	}
	if sept := attrs&attrSeptVEDisable != 0; sept != t.SeptVEDisable {
		return attest.Denyf(attest.ClassPolicy, "TD_ATTRIBUTES %x: SEPT_VE_DISABLE (bit 28) is %t, reference wants %t",
			body.GetTdAttributes(), sept, t.SeptVEDisable)
	}
	if !bytes.Equal(body.GetTdAttributes(), t.TDAttributes) {
		return attest.Denyf(attest.ClassPolicy, "TD_ATTRIBUTES %x, reference %x", body.GetTdAttributes(), []byte(t.TDAttributes))
	}
	if !bytes.Equal(body.GetXfam(), t.XFAM) {
		return attest.Denyf(attest.ClassPolicy, "XFAM %x, reference %x", body.GetXfam(), []byte(t.XFAM))
	}
	return nil
}

// checkMeasurements checks MRSEAM, MRTD, the config/owner registers, the
// event log replay and the RTMRs.
func checkMeasurements(body *pb.TDQuoteBody, t *attest.TDXReference, ccel []byte) error {
	if len(t.MRSEAM) > 0 {
		ok := false
		for _, m := range t.MRSEAM {
			ok = ok || bytes.Equal(body.GetMrSeam(), m)
		}
		if !ok {
			return attest.Denyf(attest.ClassMeasurement, "MRSEAM %x is not a listed TDX module", body.GetMrSeam())
		}
	}
	zero := make([]byte, 48)
	for _, f := range []struct {
		name      string
		have, ref []byte
	}{
		{"MRTD", body.GetMrTd(), t.MRTD},
		{"MRCONFIGID", body.GetMrConfigId(), t.MRConfigID},
		{"MROWNER", body.GetMrOwner(), t.MROwner},
		{"MROWNERCONFIG", body.GetMrOwnerConfig(), t.MROwnerConfig},
	} {
		want := f.ref
		if len(want) == 0 {
			want = zero
		}
		if !bytes.Equal(f.have, want) {
			return attest.Denyf(attest.ClassMeasurement, "%s %x, reference %x", f.name, f.have, want)
		}
	}
	replayed, err := Replay(ccel)
	if err != nil {
		return attest.Deny(attest.ClassMalformed, err)
	}
	rtmrs := body.GetRtmrs()
	for i := range 4 {
		if !bytes.Equal(replayed[i][:], rtmrs[i]) {
			return attest.Denyf(attest.ClassMeasurement, "CC event log replays RTMR%d to %x, the quote says %x", i, replayed[i], rtmrs[i])
		}
	}
	for i := range 4 {
		if !bytes.Equal(rtmrs[i], t.RTMR[i]) {
			return attest.Denyf(attest.ClassMeasurement, "RTMR%d %x, reference %x", i, rtmrs[i], []byte(t.RTMR[i]))
		}
	}
	return nil
}
