package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/google/uuid"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Verifier judges SEV-SNP evidence against an attest.Reference. Its fields
// are read on first use and must not change afterwards.
type Verifier struct {
	// Roots pins the ARK/ASK(/ASVK) per product line ("Milan", "Genoa",
	// "Turin"); nil means AMDRoots(). A product without an entry is
	// denied: no other root is ever trusted, least of all one from the
	// evidence.
	Roots map[string]*Roots
	// Getter serves KDS collateral (CRLs, a VCEK missing from the
	// evidence). nil means the zero Collateral, which refuses the network,
	// so every report is denied for want of a CRL until a bundle is given.
	Getter trust.HTTPSGetter
	// Now is the time certificates and CRLs are checked at; nil: time.Now.
	Now func() time.Time
	// Log receives one line per denial with its class; nil: discard.
	Log *slog.Logger

	once    sync.Once
	initErr error
	roots   map[string]*Roots
	amd     map[string]*trust.AMDRootCerts
	crls    crlCache // CRLs whose ARK signature verified, by bytes and issuer
}

var _ attest.Verifier = (*Verifier)(nil)

// Platform implements attest.Verifier.
func (*Verifier) Platform() attest.Platform { return attest.PlatformSNP }

// Challenge implements attest.Verifier: SNP has no challenge step; freshness
// comes from the nonce inside the binding.
func (*Verifier) Challenge([]byte) ([]byte, []byte, error) { return nil, nil, nil }

func (v *Verifier) init() error {
	v.once.Do(func() {
		roots := v.Roots
		if roots == nil {
			roots, v.initErr = AMDRoots()
			if v.initErr != nil {
				return
			}
		}
		v.roots = map[string]*Roots{}
		v.amd = map[string]*trust.AMDRootCerts{}
		for p, r := range roots {
			if r == nil || r.ARK == nil || r.ASK == nil {
				v.initErr = fmt.Errorf("sev-snp verifier: roots[%q]: ARK and ASK are required", p)
				return
			}
			v.roots[p] = r
			// go-sev-guest keeps a CRL per AMDRootCerts; one per product
			// line and verifier, never the package-global defaults.
			v.amd[p] = &trust.AMDRootCerts{Product: p, ProductLine: p,
				ProductCerts: &trust.ProductCerts{Ark: r.ARK, Ask: r.ASK, Asvk: r.ASVK}}
		}
	})
	return v.initErr
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) getter() trust.HTTPSGetter {
	if v.Getter != nil {
		return v.Getter
	}
	return &Collateral{}
}

func (v *Verifier) log() *slog.Logger {
	if v.Log != nil {
		return v.Log
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Verify implements attest.Verifier. Order (ARCHITECTURE §4): shape; chain
// identity (signing key kind, product); collateral (validity windows, CRLs
// signed by the pinned ARK and current); revocation; signatures (VCEK ← ASK ←
// ARK, report); TCB; guest policy; binding; measurements; and finally
// go-sev-guest's validate with every option set, as a second opinion.
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	out, err := v.verify(ctx, ev, in)
	if err != nil {
		v.log().Info("sev-snp evidence denied", "class", attest.ClassOf(err), "reason", err.Error())
		return nil, err
	}
	return out, nil
}

// report is the parsed evidence.
type report struct {
	raw   []byte
	pb    *spb.Report
	info  abi.SignerInfo
	table *abi.CertTable
}

func parseEvidence(ev *attest.Evidence) (*report, error) {
	if err := ev.Check(attest.PlatformSNP); err != nil {
		return nil, err
	}
	for name := range ev.Blobs {
		if name != BlobReport && name != BlobCerts {
			return nil, attest.Denyf(attest.ClassMalformed, "evidence: unknown blob %q (want %q, %q)", name, BlobReport, BlobCerts)
		}
	}
	raw, err := ev.Blob(BlobReport)
	if err != nil {
		return nil, err
	}
	if len(raw) != abi.ReportSize {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %d bytes, want %d (SEV-SNP ABI Table 23)", BlobReport, len(raw), abi.ReportSize)
	}
	if err := abi.ValidateReportFormat(raw); err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %v", BlobReport, err)
	}
	pb, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %v", BlobReport, err)
	}
	if pb.GetSignatureAlgo() != abi.SignEcdsaP384Sha384 {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: SIGNATURE_ALGO %d, want %d (ECDSA P-384 SHA-384)", BlobReport, pb.GetSignatureAlgo(), abi.SignEcdsaP384Sha384)
	}
	info, err := abi.ParseSignerInfo(pb.GetSignerInfo())
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: SIGNER_INFO: %v", BlobReport, err)
	}
	table, err := parseCertTable(ev.Blobs[BlobCerts])
	if err != nil {
		return nil, err
	}
	return &report{raw: raw, pb: pb, info: info, table: table}, nil
}

// parseCertTable parses the GHCB certificate table (GHCB spec §4.1.8.1):
// 24-byte entries {GUID, offset, length} up to an all-zero entry, then the
// data. go-sev-guest's CertTable.Unmarshal adds offset and length in 32 bits,
// so a crafted entry wraps around and makes it slice out of range or
// allocate 4 GiB; the bounds are checked here in 64 bits first.
func parseCertTable(b []byte) (*abi.CertTable, error) {
	t := new(abi.CertTable)
	if len(b) == 0 {
		return t, nil
	}
	if len(b) > MaxCertTableSize {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %d bytes, at most %d", BlobCerts, len(b), MaxCertTableSize)
	}
	headers, err := abi.ParseSnpCertTableHeader(b)
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "blob %q: %v", BlobCerts, err)
	}
	seen := map[uuid.UUID]bool{}
	for i, h := range headers {
		if end := uint64(h.Offset) + uint64(h.Length); end > uint64(len(b)) {
			return nil, attest.Denyf(attest.ClassMalformed, "blob %q: entry %d (%s) spans bytes %d-%d of %d", BlobCerts, i, h.GUID, h.Offset, end, len(b))
		}
		// Two entries for one GUID would let the table say two things.
		if seen[h.GUID] {
			return nil, attest.Denyf(attest.ClassMalformed, "blob %q: entry %d repeats GUID %s", BlobCerts, i, h.GUID)
		}
		seen[h.GUID] = true
		t.Entries = append(t.Entries, abi.CertTableEntry{GUID: h.GUID,
			RawCert: bytes.Clone(b[h.Offset : uint64(h.Offset)+uint64(h.Length)])})
	}
	return t, nil
}

func (v *Verifier) verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	if err := v.init(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	ref := in.Reference
	if ref == nil {
		return nil, attest.Denyf(attest.ClassInternal, "sev-snp verify: no reference")
	}
	if err := ref.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if ref.Platform != attest.PlatformSNP {
		return nil, attest.Denyf(attest.ClassInternal, "reference %q is for %q, not %q", ref.Profile, ref.Platform, attest.PlatformSNP)
	}
	if err := in.Binding.Validate(); err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	want := ref.SNP
	product := want.Product
	roots, ok := v.roots[product]
	if !ok {
		return nil, attest.Denyf(attest.ClassInternal, "sev-snp verify: no pinned roots for product %q", product)
	}
	now := v.now()
	getter := v.getter()

	// 1. Shape.
	r, err := parseEvidence(ev)
	if err != nil {
		return nil, err
	}
	rep := r.pb

	// 2. Chain identity: which key signed, for which product.
	key := r.info.SigningKey
	var ica *x509.Certificate
	var ekGUID string
	switch key {
	case abi.VcekReportSigner:
		ica, ekGUID = roots.ASK, abi.VcekGUID
	case abi.VlekReportSigner:
		if !want.AllowVLEK {
			return nil, attest.Denyf(attest.ClassChain, "report signed by a VLEK; reference %q allows only a VCEK", ref.Profile)
		}
		if roots.ASVK == nil {
			return nil, attest.Denyf(attest.ClassChain, "report signed by a VLEK; no ASVK pinned for %s", product)
		}
		ica, ekGUID = roots.ASVK, abi.VlekGUID
	default:
		return nil, attest.Denyf(attest.ClassChain, "report SIGNING_KEY is %v, want VCEK or VLEK", key)
	}
	// CPUID_FAM_ID/MOD_ID (report v3+, ABI Table 23) name the product; v2
	// reports lack them and the product comes from the certificate below.
	if fms := rep.GetCpuid1EaxFms(); fms != 0 {
		if got := kds.ProductLineFromFms(fms); got != product {
			return nil, attest.Denyf(attest.ClassChain, "report CPUID family/model is product %q, reference pins %q", got, product)
		}
	}
	ekDER, err := r.table.GetByGUIDString(ekGUID)
	if err != nil || len(ekDER) == 0 {
		if key == abi.VlekReportSigner {
			return nil, attest.Denyf(attest.ClassMalformed, "blob %q: no VLEK certificate (a VLEK cannot be fetched from the KDS)", BlobCerts)
		}
		u := kds.VCEKCertURL(product, rep.GetChipId(), kds.TCBVersion(rep.GetReportedTcb()))
		if ekDER, err = trust.GetWith(ctx, getter, u); err != nil {
			return nil, attest.Denyf(attest.ClassCollateral, "VCEK certificate not in evidence and not available: %v", err)
		}
	}
	ek, err := x509.ParseCertificate(ekDER)
	if err != nil {
		return nil, attest.Denyf(attest.ClassMalformed, "%v certificate: %v", key, err)
	}
	exts, err := kds.CertificateExtensions(ek, key)
	if err != nil {
		return nil, attest.Denyf(attest.ClassChain, "%v certificate extensions (KDS spec §3.2): %v", key, err)
	}
	var productPB *spb.SevProduct
	if rep.GetCpuid1EaxFms() == 0 {
		p, err := kds.ParseProductName(exts.ProductName, key)
		if err != nil {
			return nil, attest.Denyf(attest.ClassChain, "%v certificate product name: %v", key, err)
		}
		if got := kds.ProductLine(p); got != product {
			return nil, attest.Denyf(attest.ClassChain, "%v certificate is for product %q, reference pins %q", key, got, product)
		}
		if productPB, err = kds.ParseProductLine(product); err != nil {
			return nil, attest.Deny(attest.ClassInternal, err)
		}
	}

	// 3. Collateral: validity windows and current CRLs signed by the ARK.
	for _, c := range []struct {
		name string
		cert *x509.Certificate
	}{{key.String(), ek}, {"ASK", ica}, {"ARK", roots.ARK}} {
		if now.Before(c.cert.NotBefore) {
			return nil, attest.Denyf(attest.ClassCollateral, "%s certificate not valid before %s", c.name, c.cert.NotBefore.UTC().Format(time.RFC3339))
		}
		if now.After(c.cert.NotAfter) {
			return nil, attest.Denyf(attest.ClassCollateral, "%s certificate expired at %s", c.name, c.cert.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	// The ASK's CRL is the one go-sev-guest consults; a VLEK chain also
	// needs the ASVK's (KDS spec §4.3).
	intermediates := []*x509.Certificate{roots.ASK}
	if key == abi.VlekReportSigner {
		intermediates = append(intermediates, roots.ASVK)
	}
	var crls []*x509.RevocationList
	for _, c := range intermediates {
		crl, err := v.crl(ctx, getter, c, roots.ARK, now)
		if err != nil {
			return nil, err
		}
		crls = append(crls, crl)
	}

	// 4. Revocation: the endorsement key or an intermediate listed.
	for _, crl := range crls {
		for _, rc := range crl.RevokedCertificateEntries {
			for _, c := range []struct {
				name   string
				serial *big.Int
			}{{key.String(), ek.SerialNumber}, {"ASK", roots.ASK.SerialNumber}, {"ICA", ica.SerialNumber}} {
				if rc.SerialNumber != nil && rc.SerialNumber.Cmp(c.serial) == 0 {
					return nil, attest.Denyf(attest.ClassRevoked, "%s certificate serial %x revoked at %s", c.name, c.serial, rc.RevocationTime.UTC().Format(time.RFC3339))
				}
			}
		}
	}

	// 5. Signatures: go-sev-guest checks the endorsement certificate against
	// the pinned ASK/ASVK and ARK only (TrustedRoots holds exactly this
	// product's pinned roots, so its fallback to embedded roots never
	// applies), and the report signature. Its revocation check is off:
	// steps 3 and 4 made it (CRL signed by the pinned ARK and current, ASK
	// not listed) and more (the endorsement key and the VLEK's ICA too),
	// on this admission's CRL; go-sev-guest's would re-verify the CRL's
	// RSA-4096 signature on every call, under a mutex per root that
	// serialises all admissions of a product line.
	amd := v.amd[product]
	chain := &spb.CertificateChain{AskCert: roots.ASK.Raw, ArkCert: roots.ARK.Raw}
	if key == abi.VcekReportSigner {
		chain.VcekCert = ekDER
	} else {
		chain.VlekCert = ekDER
	}
	att := &spb.Attestation{Report: rep, CertificateChain: chain}
	vopts := &verify.Options{
		CheckRevocations:    false, // made in steps 3 and 4, see above
		DisableCertFetching: v.Getter == nil,
		Getter:              getter,
		Now:                 now,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{product: {amd}},
		Product:             productPB,
	}
	if err := verify.SnpAttestationContext(ctx, att, vopts); err != nil {
		var unavailable verify.CRLUnavailableErr
		if errors.As(err, &unavailable) {
			return nil, attest.Denyf(attest.ClassCollateral, "CRL: %v", err)
		}
		return nil, attest.Denyf(attest.ClassChain, "%v chain to pinned %s roots or report signature: %v", key, product, err)
	}
	// CHIP_ID ties the report to the VCEK's chip (KDS spec: HWID extension).
	if r.info.MaskChipKey {
		return nil, attest.Denyf(attest.ClassPolicy, "report CHIP_ID is masked (SIGNER_INFO.MASK_CHIP_KEY); the chip cannot be identified")
	}
	if key == abi.VcekReportSigner && !bytes.Equal(exts.HWID, rep.GetChipId()) {
		return nil, attest.Denyf(attest.ClassChain, "report CHIP_ID %x is not the VCEK certificate's HWID %x", rep.GetChipId(), exts.HWID)
	}

	// 6. TCB (SEV-SNP ABI §2.2, Table 3).
	if err := checkTCB(rep, uint64(exts.TCBVersion), key, want); err != nil {
		return nil, err
	}

	// 7. Guest policy and privilege level.
	if err := checkPolicy(rep, want); err != nil {
		return nil, err
	}

	// 8. Binding: REPORT_DATA commits to this session.
	rd := in.Binding.SHA512()
	if !bytes.Equal(rep.GetReportData(), rd[:]) {
		return nil, attest.Denyf(attest.ClassBinding, "report REPORT_DATA %x is not this session's binding %x", rep.GetReportData(), rd)
	}

	// 9. Measurements.
	hostData, familyID, imageID := orZero(want.HostData, abi.HostDataSize), orZero(want.FamilyID, abi.FamilyIDSize), orZero(want.ImageID, abi.ImageIDSize)
	for _, f := range []struct {
		name      string
		got, want []byte
	}{
		{"MEASUREMENT", rep.GetMeasurement(), want.Measurement},
		{"HOST_DATA", rep.GetHostData(), hostData},
		{"FAMILY_ID", rep.GetFamilyId(), familyID},
		{"IMAGE_ID", rep.GetImageId(), imageID},
	} {
		if !bytes.Equal(f.got, f.want) {
			return nil, attest.Denyf(attest.ClassMeasurement, "report %s %x, reference %q pins %x", f.name, f.got, ref.Profile, f.want)
		}
	}

	// 10. Second opinion: go-sev-guest's validate with every option set.
	// Every check it makes is made above; it is here so a check forgotten
	// above, or added to the library, still denies.
	if err := validate.SnpAttestation(att, libraryOptions(rep, key, exts, want, rd, hostData, familyID, imageID)); err != nil {
		return nil, attest.Denyf(attest.ClassPolicy, "go-sev-guest validate: %v", err)
	}

	return &attest.Verified{
		Platform:   attest.PlatformSNP,
		Profile:    ref.Profile,
		HardwareID: hex.EncodeToString(rep.GetChipId()),
		TCB:        formatTCB(product, rep.GetReportedTcb()),
		Measurements: map[string]string{
			"measurement": hex.EncodeToString(rep.GetMeasurement()),
			"host_data":   hex.EncodeToString(rep.GetHostData()),
		},
	}, nil
}

func orZero(b []byte, n int) []byte {
	if len(b) == 0 {
		return make([]byte, n)
	}
	return b
}

// crl returns the CRL that intermediate names, fetched through getter on
// every call (so a CRL replaced in the collateral applies to the very next
// admission), signed by the pinned ARK and current at now. Only the
// signature check is cached: by the CRL's bytes and the ARK (crlCache), and
// never past the CRL's NextUpdate.
func (v *Verifier) crl(ctx context.Context, getter trust.HTTPSGetter, intermediate, ark *x509.Certificate, now time.Time) (*x509.RevocationList, error) {
	if len(intermediate.CRLDistributionPoints) != 1 {
		return nil, attest.Denyf(attest.ClassChain, "pinned %s has %d CRL distribution points, want 1", intermediate.Subject.CommonName, len(intermediate.CRLDistributionPoints))
	}
	u := intermediate.CRLDistributionPoints[0]
	b, err := trust.GetWith(ctx, getter, u)
	if err != nil {
		return nil, attest.Denyf(attest.ClassCollateral, "CRL %s unavailable: %v", u, err)
	}
	key := newCRLKey(b, ark)
	crl, verified := v.crls.get(key, now)
	if !verified {
		if crl, err = x509.ParseRevocationList(b); err != nil {
			return nil, attest.Denyf(attest.ClassCollateral, "CRL %s: %v", u, err)
		}
		if err := crl.CheckSignatureFrom(ark); err != nil {
			return nil, attest.Denyf(attest.ClassChain, "CRL %s not signed by the pinned ARK: %v", u, err)
		}
	}
	// Currency is checked on every call, cached or not.
	if now.Before(crl.ThisUpdate) {
		return nil, attest.Denyf(attest.ClassCollateral, "CRL %s not valid before %s", u, crl.ThisUpdate.UTC().Format(time.RFC3339))
	}
	if crl.NextUpdate.IsZero() || !now.Before(crl.NextUpdate) {
		return nil, attest.Denyf(attest.ClassCollateral, "CRL %s stale: next update was due %s", u, crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	if !verified {
		v.crls.put(key, crl, now)
	}
	return crl, nil
}

// tcbLE reports whether every byte-wide component of a is at most b's.
// Comparing all eight bytes is layout-independent (Milan/Genoa and Turin
// place the SPLs differently), reserved bytes included.
func tcbLE(a, b uint64) bool {
	for i := 0; i < 64; i += 8 {
		if (a>>i)&0xff > (b>>i)&0xff {
			return false
		}
	}
	return true
}

func checkTCB(rep *spb.Report, certTCB uint64, key abi.ReportSigner, want *attest.SNPReference) error {
	product := want.Product
	reported, committed, current, launch := rep.GetReportedTcb(), rep.GetCommittedTcb(), rep.GetCurrentTcb(), rep.GetLaunchTcb()
	// Any TCB change invalidates the endorsement certificate: it must be
	// the one issued for exactly the reported TCB.
	if certTCB != reported {
		return attest.Denyf(attest.ClassTCB, "%v certificate TCB %s ≠ report REPORTED_TCB %s", key, formatTCB(product, certTCB), formatTCB(product, reported))
	}
	minTCB := composeTCB(product, want.MinTCB)
	if !tcbLE(minTCB, reported) {
		return attest.Denyf(attest.ClassTCB, "report REPORTED_TCB %s below the minimum %s", formatTCB(product, reported), formatTCB(product, minTCB))
	}
	// A VM launched on firmware below the minimum may have been
	// compromised before a later update.
	if !tcbLE(minTCB, launch) {
		return attest.Denyf(attest.ClassTCB, "report LAUNCH_TCB %s below the minimum %s", formatTCB(product, launch), formatTCB(product, minTCB))
	}
	// COMMITTED_TCB is the anti-rollback floor: below what is reported, the
	// host could roll firmware back under the reported level.
	if !tcbLE(reported, committed) {
		return attest.Denyf(attest.ClassTCB, "report COMMITTED_TCB %s below REPORTED_TCB %s", formatTCB(product, committed), formatTCB(product, reported))
	}
	// No provisional firmware: what runs is what is committed.
	if committed != current {
		return attest.Denyf(attest.ClassTCB, "report COMMITTED_TCB %s ≠ CURRENT_TCB %s (provisional firmware)", formatTCB(product, committed), formatTCB(product, current))
	}
	if rep.GetCommittedBuild() != rep.GetCurrentBuild() || rep.GetCommittedMajor() != rep.GetCurrentMajor() || rep.GetCommittedMinor() != rep.GetCurrentMinor() {
		return attest.Denyf(attest.ClassTCB, "report committed firmware %d.%d build %d ≠ current %d.%d build %d (provisional firmware)",
			rep.GetCommittedMajor(), rep.GetCommittedMinor(), rep.GetCommittedBuild(), rep.GetCurrentMajor(), rep.GetCurrentMinor(), rep.GetCurrentBuild())
	}
	if rep.GetCurrentBuild() < uint32(want.MinBuild) {
		return attest.Denyf(attest.ClassTCB, "report CURRENT_BUILD %d below the minimum %d", rep.GetCurrentBuild(), want.MinBuild)
	}
	if api := uint16(rep.GetCurrentMajor()<<8 | rep.GetCurrentMinor()); api < want.MinAPIVersion {
		return attest.Denyf(attest.ClassTCB, "report firmware API %d.%d below the minimum %d.%d", api>>8, api&0xff, want.MinAPIVersion>>8, want.MinAPIVersion&0xff)
	}
	return nil
}

func checkPolicy(rep *spb.Report, want *attest.SNPReference) error {
	pol, err := abi.ParseSnpPolicy(rep.GetPolicy())
	if err != nil {
		return attest.Denyf(attest.ClassMalformed, "report POLICY: %v", err)
	}
	// Guest policy bits, SEV-SNP ABI §4.3 Table 9.
	switch {
	case pol.Debug:
		return attest.Denyf(attest.ClassPolicy, "report POLICY.DEBUG set: the host can read and write guest memory")
	case pol.MigrateMA:
		return attest.Denyf(attest.ClassPolicy, "report POLICY.MIGRATE_MA set: a migration agent may export the guest")
	case pol.SMT && !want.SMT:
		return attest.Denyf(attest.ClassPolicy, "report POLICY.SMT set; reference does not allow SMT")
	case pol.CXLAllowed:
		return attest.Denyf(attest.ClassPolicy, "report POLICY.CXL_ALLOW set: guest memory may live on CXL devices")
	}
	// The firmware refuses to launch a guest whose ABI minimum exceeds
	// its own version; a report saying otherwise is inconsistent.
	if uint16(pol.ABIMajor)<<8|uint16(pol.ABIMinor) > uint16(rep.GetCurrentMajor()<<8|rep.GetCurrentMinor()) {
		return attest.Denyf(attest.ClassPolicy, "report POLICY.ABI %d.%d above the firmware API %d.%d", pol.ABIMajor, pol.ABIMinor, rep.GetCurrentMajor(), rep.GetCurrentMinor())
	}
	info, err := abi.ParseSnpPlatformInfo(rep.GetPlatformInfo())
	if err != nil {
		return attest.Denyf(attest.ClassMalformed, "report PLATFORM_INFO: %v", err)
	}
	if info.SMTEnabled && !want.SMT {
		return attest.Denyf(attest.ClassPolicy, "report PLATFORM_INFO.SMT_EN set; reference does not allow SMT")
	}
	if info.TIOEnabled {
		return attest.Denyf(attest.ClassPolicy, "report PLATFORM_INFO.TIO_EN set: devices may access guest memory")
	}
	// VMPL 0 is the guest kernel itself; a higher VMPL could be software
	// that the VMPL-0 component (e.g. an SVSM) does not vouch for.
	if rep.GetVmpl() != 0 {
		return attest.Denyf(attest.ClassPolicy, "report VMPL %d, want 0", rep.GetVmpl())
	}
	if rep.GetGuestSvn() < want.MinGuestSVN {
		return attest.Denyf(attest.ClassPolicy, "report GUEST_SVN %d below the minimum %d", rep.GetGuestSvn(), want.MinGuestSVN)
	}
	return nil
}

// libraryOptions sets every field of validate.Options: go-sev-guest skips a
// check whose option is nil or zero.
func libraryOptions(rep *spb.Report, key abi.ReportSigner, exts *kds.Extensions, want *attest.SNPReference, rd [64]byte, hostData, familyID, imageID []byte) *validate.Options {
	minTCB := kds.DecomposeTCBVersion(kds.TCBVersion(composeTCB(want.Product, want.MinTCB)))
	vmpl := 0
	var chipID []byte
	if key == abi.VcekReportSigner {
		chipID = exts.HWID
	}
	return &validate.Options{
		// The most the guest policy may allow; ABI minimum 0.0 because the
		// firmware minimum is enforced through MinimumVersion.
		GuestPolicy: abi.SnpPolicy{ABIMajor: 0, ABIMinor: 0, SMT: want.SMT, MigrateMA: false,
			Debug: false, SingleSocket: false, CXLAllowed: false, MemAES256XTS: false,
			RAPLDis: false, CipherTextHidingDRAM: false, PageSwapDisable: false},
		MinimumGuestSvn: want.MinGuestSVN,
		ReportData:      rd[:],
		HostData:        hostData,
		ImageID:         imageID,
		FamilyID:        familyID,
		// REPORT_ID is chosen by the firmware per guest and cannot be
		// pinned; REPORT_ID_MA names a migration agent, which is denied.
		ReportID:                  nil,
		ReportIDMA:                nil,
		Measurement:               want.Measurement,
		ChipID:                    chipID,
		MinimumBuild:              want.MinBuild,
		MinimumVersion:            want.MinAPIVersion,
		MinimumTCB:                minTCB,
		MinimumLaunchTCB:          minTCB,
		PermitProvisionalFirmware: false,
		PlatformInfo:              &abi.SnpPlatformInfo{SMTEnabled: want.SMT, TSMEEnabled: true},
		// No ID block is part of Palisade's launch: MEASUREMENT pins the image.
		RequireAuthorKey:               false,
		RequireIDBlock:                 false,
		TrustedAuthorKeys:              nil,
		TrustedAuthorKeyHashes:         nil,
		TrustedIDKeys:                  nil,
		TrustedIDKeyHashes:             nil,
		CertTableOptions:               nil,
		MinimumLaunchMitigationVector:  0,
		MinimumCurrentMitigationVector: 0,
		VMPL:                           &vmpl,
	}
}

// TCB_VERSION layouts (SEV-SNP ABI Table 3; Turin adds FMC at byte 0 and
// shifts the others).
func composeTCB(product string, t attest.SNPTCB) uint64 {
	if product == "Turin" {
		return uint64(t.FMC) | uint64(t.BootLoader)<<8 | uint64(t.TEE)<<16 | uint64(t.SNP)<<24 | uint64(t.Microcode)<<56
	}
	return uint64(t.BootLoader) | uint64(t.TEE)<<8 | uint64(t.SNP)<<48 | uint64(t.Microcode)<<56
}

// DecomposeTCB splits a TCB_VERSION of product into its components.
func DecomposeTCB(product string, v uint64) attest.SNPTCB {
	b := func(i int) uint8 { return uint8(v >> (8 * i)) }
	if product == "Turin" {
		return attest.SNPTCB{FMC: b(0), BootLoader: b(1), TEE: b(2), SNP: b(3), Microcode: b(7)}
	}
	return attest.SNPTCB{BootLoader: b(0), TEE: b(1), SNP: b(6), Microcode: b(7)}
}

// ComposeTCB is the TCB_VERSION of product with components t.
func ComposeTCB(product string, t attest.SNPTCB) uint64 { return composeTCB(product, t) }

func formatTCB(product string, v uint64) string {
	t := DecomposeTCB(product, v)
	s := fmt.Sprintf("0x%016x (bl=%d tee=%d snp=%d ucode=%d", v, t.BootLoader, t.TEE, t.SNP, t.Microcode)
	if product == "Turin" {
		s += fmt.Sprintf(" fmc=%d", t.FMC)
	}
	return s + ")"
}
