// Package snptest builds SEV-SNP test roots (ARK → ASK/ASVK → VCEK/VLEK), a
// report Signer with every field settable, a Transport, an offline KDS bundle
// with CRLs, and a matching attest.Reference, for tests and the CVM emulator.
//
// It is not hardware and proves nothing: its roots are trusted only by a
// Verifier whose Roots are explicitly set to Chain.Roots().
package snptest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/testing/data"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
)

// Keys are the private keys of a chain.
type Keys struct {
	ARK, ASK, ASVK *rsa.PrivateKey
	VCEK, VLEK     *ecdsa.PrivateKey
}

// FixedKeys are go-sev-guest's published test keys (RSA-4096, P-384): fast
// to use, and public, so they are never trusted outside a test.
func FixedKeys() *Keys {
	return &Keys{ARK: data.ARKPrivateKey, ASK: data.ASKPrivateKey, ASVK: data.ASVKPrivateKey,
		VCEK: data.VCEKPrivateKey, VLEK: data.VLEKPrivateKey}
}

// GenerateKeys makes fresh keys (rsaBits for ARK/ASK/ASVK; AMD uses 4096).
func GenerateKeys(rsaBits int) (*Keys, error) {
	k := &Keys{}
	var err error
	for _, p := range []**rsa.PrivateKey{&k.ARK, &k.ASK, &k.ASVK} {
		if *p, err = rsa.GenerateKey(rand.Reader, rsaBits); err != nil {
			return nil, err
		}
	}
	for _, p := range []**ecdsa.PrivateKey{&k.VCEK, &k.VLEK} {
		if *p, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Defaults of a test chain and report.
var (
	// DefaultTCB: bl=3 tee=0 snp=8 ucode=115 (Milan layout).
	DefaultTCB = snp.ComposeTCB("Milan", attest.SNPTCB{BootLoader: 3, TEE: 0, SNP: 8, Microcode: 115})
	// DefaultMeasurement, DefaultHostData, DefaultChipID are recognisable patterns.
	DefaultMeasurement = bytes.Repeat([]byte{0x4d}, abi.MeasurementSize)
	DefaultHostData    = bytes.Repeat([]byte{0x48}, abi.HostDataSize)
	DefaultChipID      = func() (c [abi.ChipIDSize]byte) {
		for i := range c {
			c[i] = byte(i + 1)
		}
		return c
	}()
)

// Firmware version of the default report: API 1.55, build 21.
const (
	APIMajor = 1
	APIMinor = 55
	Build    = 21
)

// ChainOptions configure NewChain; zero fields take defaults.
type ChainOptions struct {
	Product   string // "Milan" (default), "Genoa", "Turin"
	Keys      *Keys  // nil: FixedKeys()
	ChipID    [abi.ChipIDSize]byte
	TCB       uint64
	NotBefore time.Time // zero: a day ago
	CSPID     string    // VLEK CSP_ID; default "palisade-test"
}

// Chain is a test ARK/ASK/ASVK and the VCEK/VLEK they certify.
type Chain struct {
	Product                    string
	Keys                       *Keys
	ARK, ASK, ASVK, VCEK, VLEK *x509.Certificate
	ChipID                     [abi.ChipIDSize]byte
	TCB                        uint64
	NotBefore                  time.Time
	CSPID                      string
}

func amdName(cn string, serial *big.Int) pkix.Name {
	return pkix.Name{Country: []string{"US"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"},
		Organization: []string{"Advanced Micro Devices"}, OrganizationalUnit: []string{"Engineering"},
		CommonName: cn, SerialNumber: fmt.Sprintf("%x", serial)}
}

// NewChain builds and signs a chain with the KDS spec's names, CRL
// distribution points and extensions, so go-sev-guest accepts it.
func NewChain(o ChainOptions) (*Chain, error) {
	c := &Chain{Product: o.Product, Keys: o.Keys, ChipID: o.ChipID, TCB: o.TCB, NotBefore: o.NotBefore, CSPID: o.CSPID}
	if c.Product == "" {
		c.Product = "Milan"
	}
	if _, err := kds.ParseProductLine(c.Product); err != nil {
		return nil, err
	}
	if c.Keys == nil {
		c.Keys = FixedKeys()
	}
	if c.ChipID == ([abi.ChipIDSize]byte{}) {
		c.ChipID = DefaultChipID
	}
	if c.TCB == 0 {
		c.TCB = DefaultTCB
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	}
	if c.CSPID == "" {
		c.CSPID = "palisade-test"
	}
	years := func(n int) time.Time { return c.NotBefore.AddDate(n, 0, 0) }
	vcekCRL := kds.CrlLinkByKey(c.Product, abi.VcekReportSigner)
	vlekCRL := kds.CrlLinkByKey(c.Product, abi.VlekReportSigner)
	ca := func(serial int64, cn, crl string, usage x509.KeyUsage) *x509.Certificate {
		sn := big.NewInt(serial)
		return &x509.Certificate{SerialNumber: sn, Subject: amdName(cn, sn), NotBefore: c.NotBefore,
			NotAfter: years(25), SignatureAlgorithm: x509.SHA384WithRSAPSS, KeyUsage: usage,
			IsCA: true, BasicConstraintsValid: true, CRLDistributionPoints: []string{crl}}
	}
	var err error
	arkT := ca(1, "ARK-"+c.Product, vcekCRL, x509.KeyUsageCertSign|x509.KeyUsageCRLSign)
	if c.ARK, err = sign(arkT, arkT, &c.Keys.ARK.PublicKey, c.Keys.ARK); err != nil {
		return nil, fmt.Errorf("ARK: %w", err)
	}
	if c.ASK, err = sign(ca(2, "SEV-"+c.Product, vcekCRL, x509.KeyUsageCertSign), c.ARK, &c.Keys.ASK.PublicKey, c.Keys.ARK); err != nil {
		return nil, fmt.Errorf("ASK: %w", err)
	}
	if c.ASVK, err = sign(ca(3, "SEV-VLEK-"+c.Product, vlekCRL, x509.KeyUsageCertSign), c.ARK, &c.Keys.ASVK.PublicKey, c.Keys.ARK); err != nil {
		return nil, fmt.Errorf("ASVK: %w", err)
	}
	if c.VCEK, err = c.IssueVCEK(VCEKOptions{}); err != nil {
		return nil, fmt.Errorf("VCEK: %w", err)
	}
	if c.VLEK, err = c.IssueVLEK(VCEKOptions{}); err != nil {
		return nil, fmt.Errorf("VLEK: %w", err)
	}
	return c, nil
}

func sign(tmpl, parent *x509.Certificate, pub any, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// VCEKOptions override fields of an endorsement certificate; zero fields
// take the chain's values.
type VCEKOptions struct {
	ChipID    *[abi.ChipIDSize]byte
	TCB       *uint64
	NotBefore time.Time
	NotAfter  time.Time // zero: NotBefore + 7 years, as the KDS issues
	Serial    *big.Int  // nil: random
	Product   string    // product name extension; "" → "<Product>-B0" (VCEK) or "<Product>" (VLEK)
}

func tcbExtensions(tcb uint64) []pkix.Extension {
	p := kds.DecomposeTCBVersion(kds.TCBVersion(tcb))
	i := func(v uint8) []byte { b, _ := asn1.Marshal(int(v)); return b }
	zero, _ := asn1.Marshal(0)
	return []pkix.Extension{
		{Id: kds.OidStructVersion, Value: zero},
		{Id: kds.OidBlSpl, Value: i(p.BlSpl)}, {Id: kds.OidTeeSpl, Value: i(p.TeeSpl)},
		{Id: kds.OidSnpSpl, Value: i(p.SnpSpl)}, {Id: kds.OidSpl4, Value: i(p.Spl4)},
		{Id: kds.OidSpl5, Value: i(p.Spl5)}, {Id: kds.OidSpl6, Value: i(p.Spl6)},
		{Id: kds.OidSpl7, Value: i(p.Spl7)}, {Id: kds.OidUcodeSpl, Value: i(p.UcodeSpl)},
	}
}

func (c *Chain) endorsement(o VCEKOptions, key abi.ReportSigner) (*x509.Certificate, error) {
	chip, tcb := c.ChipID, c.TCB
	if o.ChipID != nil {
		chip = *o.ChipID
	}
	if o.TCB != nil {
		tcb = *o.TCB
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = c.NotBefore
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = o.NotBefore.AddDate(7, 0, 0)
	}
	if o.Serial == nil {
		var err error
		if o.Serial, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63)); err != nil {
			return nil, err
		}
	}
	exts := tcbExtensions(tcb)
	ica, icaKey, pub := c.ASK, c.Keys.ASK, &c.Keys.VCEK.PublicKey
	if key == abi.VcekReportSigner {
		if o.Product == "" {
			o.Product = c.Product + "-B0"
		}
		hwid, _ := asn1.Marshal(chip[:])
		exts = append(exts, pkix.Extension{Id: kds.OidHwid, Value: hwid})
	} else {
		if o.Product == "" {
			o.Product = c.Product
		}
		ica, icaKey, pub = c.ASVK, c.Keys.ASVK, &c.Keys.VLEK.PublicKey
		csp, _ := asn1.MarshalWithParams(c.CSPID, "ia5")
		exts = append(exts, pkix.Extension{Id: kds.OidCspID, Value: csp})
	}
	name, _ := asn1.MarshalWithParams(o.Product, "ia5")
	exts = append(exts, pkix.Extension{Id: kds.OidProductName1, Value: name})
	t := &x509.Certificate{SerialNumber: o.Serial, Subject: amdName("SEV-"+key.String(), o.Serial),
		NotBefore: o.NotBefore, NotAfter: o.NotAfter, SignatureAlgorithm: x509.SHA384WithRSAPSS,
		ExtraExtensions: exts}
	return sign(t, ica, pub, icaKey)
}

// IssueVCEK issues another VCEK for the chain's VCEK key (e.g. at another
// TCB, or expired); it does not replace c.VCEK.
func (c *Chain) IssueVCEK(o VCEKOptions) (*x509.Certificate, error) {
	return c.endorsement(o, abi.VcekReportSigner)
}

// IssueVLEK issues a VLEK certificate for the chain's VLEK key.
func (c *Chain) IssueVLEK(o VCEKOptions) (*x509.Certificate, error) {
	return c.endorsement(o, abi.VlekReportSigner)
}

// Roots are the chain's pinned roots for a snp.Verifier.
func (c *Chain) Roots() map[string]*snp.Roots {
	return map[string]*snp.Roots{c.Product: {ARK: c.ARK, ASK: c.ASK, ASVK: c.ASVK}}
}

// FMS returns CPUID_1_EAX family/model/stepping of product (stepping 0).
func FMS(product string) uint32 {
	switch product {
	case "Genoa":
		return abi.FmsToCpuid1Eax(0x19, 0x11, 0)
	case "Turin":
		return abi.FmsToCpuid1Eax(0x1a, 0x02, 0)
	}
	return abi.FmsToCpuid1Eax(0x19, 0x01, 0)
}

// Report returns a version-3 report with every field set deliberately: no
// debug, no migration agent, no SMT, VMPL 0, VCEK-signed, TCB reported =
// committed = current = launch = the chain's, API 1.55 build 21, default
// measurement and host data, zero FAMILY_ID/IMAGE_ID.
func (c *Chain) Report(reportData [64]byte) *spb.Report {
	reportID := sha512.Sum512_256([]byte("palisade snptest report id"))
	return &spb.Report{
		Version:  abi.ReportVersion3,
		GuestSvn: 1,
		// Bit 17 is reserved-must-be-one (ABI Table 9); ABI minimum 1.51.
		Policy:           abi.SnpPolicyToBytes(abi.SnpPolicy{ABIMajor: 1, ABIMinor: 51}),
		FamilyId:         make([]byte, abi.FamilyIDSize),
		ImageId:          make([]byte, abi.ImageIDSize),
		Vmpl:             0,
		SignatureAlgo:    abi.SignEcdsaP384Sha384,
		CurrentTcb:       c.TCB,
		PlatformInfo:     0,
		SignerInfo:       abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VcekReportSigner}),
		ReportData:       bytes.Clone(reportData[:]),
		Measurement:      bytes.Clone(DefaultMeasurement),
		HostData:         bytes.Clone(DefaultHostData),
		IdKeyDigest:      make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest:  make([]byte, abi.AuthorKeyDigestSize),
		ReportId:         reportID[:],
		ReportIdMa:       bytes.Repeat([]byte{0xff}, abi.ReportIDMASize),
		ReportedTcb:      c.TCB,
		Cpuid1EaxFms:     FMS(c.Product),
		ChipId:           bytes.Clone(c.ChipID[:]),
		CommittedTcb:     c.TCB,
		CurrentBuild:     Build,
		CurrentMinor:     APIMinor,
		CurrentMajor:     APIMajor,
		CommittedBuild:   Build,
		CommittedMinor:   APIMinor,
		CommittedMajor:   APIMajor,
		LaunchTcb:        c.TCB,
		LaunchMitVector:  0,
		CurrentMitVector: 0,
		Signature:        make([]byte, abi.SignatureSize),
	}
}

// Sign returns the raw report r signed by the VCEK or VLEK key its
// SIGNER_INFO names (ECDSA P-384 over SHA-384 of bytes 0x0-0x29F, ABI
// Table 23). r is not modified.
func (c *Chain) Sign(r *spb.Report) ([]byte, error) {
	r2 := proto.Clone(r).(*spb.Report)
	r2.Signature = make([]byte, abi.SignatureSize)
	raw, err := abi.ReportToAbiBytes(r2)
	if err != nil {
		return nil, err
	}
	info, err := abi.ParseSignerInfo(r.GetSignerInfo())
	if err != nil {
		return nil, err
	}
	key := c.Keys.VCEK
	if info.SigningKey == abi.VlekReportSigner {
		key = c.Keys.VLEK
	}
	return SignRaw(raw, key)
}

// SignRaw signs a raw report in place with key and returns it.
func SignRaw(raw []byte, key *ecdsa.PrivateKey) ([]byte, error) {
	if len(raw) != abi.ReportSize {
		return nil, fmt.Errorf("report is %d bytes, want %d", len(raw), abi.ReportSize)
	}
	digest := crypto.SHA384.New()
	digest.Write(abi.SignedComponent(raw))
	R, S, err := ecdsa.Sign(rand.Reader, key, digest.Sum(nil))
	if err != nil {
		return nil, err
	}
	clear(raw[0x2A0:])
	if err := abi.SetSignature(R, S, raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// CertTable encodes a GHCB certificate table (GUID string → DER).
func CertTable(entries map[string][]byte) ([]byte, error) {
	t := &abi.CertTable{}
	// A fixed order keeps tables reproducible.
	for _, g := range []string{abi.ArkGUID, abi.AskGUID, abi.VcekGUID, abi.VlekGUID, abi.AsvkGUID} {
		if b, ok := entries[g]; ok {
			t.Entries = append(t.Entries, abi.CertTableEntry{GUID: uuid.MustParse(g), RawCert: b})
		}
	}
	if len(t.Entries) != len(entries) {
		return nil, fmt.Errorf("cert table: unknown GUID among %d entries", len(entries))
	}
	return t.Marshal(), nil
}

// CertTable is what an SNP host hands a guest: ARK, ASK and VCEK.
func (c *Chain) CertTable() []byte {
	b, _ := CertTable(map[string][]byte{abi.ArkGUID: c.ARK.Raw, abi.AskGUID: c.ASK.Raw, abi.VcekGUID: c.VCEK.Raw})
	return b
}

// CertTableVLEK is a cloud host's table: ARK, ASVK (as ASK) and VLEK.
func (c *Chain) CertTableVLEK() []byte {
	b, _ := CertTable(map[string][]byte{abi.ArkGUID: c.ARK.Raw, abi.AskGUID: c.ASVK.Raw, abi.VlekGUID: c.VLEK.Raw})
	return b
}

// Transport is an snp.Transport that signs reports with a Chain.
type Transport struct {
	Chain *Chain
	// Report builds the report for reportData; nil: Chain.Report.
	Report func(reportData [64]byte) *spb.Report
	// Certs is the certificate table returned; nil: Chain.CertTable().
	Certs []byte
}

var _ snp.Transport = (*Transport)(nil)

// GetExtendedReport implements snp.Transport.
func (t *Transport) GetExtendedReport(_ context.Context, rd [64]byte) ([]byte, []byte, error) {
	mk := t.Report
	if mk == nil {
		mk = t.Chain.Report
	}
	raw, err := t.Chain.Sign(mk(rd))
	if err != nil {
		return nil, nil, err
	}
	certs := t.Certs
	if certs == nil {
		certs = t.Chain.CertTable()
	}
	return raw, bytes.Clone(certs), nil
}

// BundleOptions configure WriteBundle.
type BundleOptions struct {
	// ThisUpdate and NextUpdate of both CRLs; zero: an hour ago and in 30 days.
	ThisUpdate, NextUpdate time.Time
	// Revoked serial numbers, listed in both CRLs.
	Revoked []*big.Int
}

// CRL returns a DER CRL signed by the chain's ARK.
func (c *Chain) CRL(o BundleOptions) ([]byte, error) {
	if o.ThisUpdate.IsZero() {
		o.ThisUpdate = time.Now().Add(-time.Hour)
	}
	if o.NextUpdate.IsZero() {
		o.NextUpdate = o.ThisUpdate.Add(30 * 24 * time.Hour)
	}
	var entries []x509.RevocationListEntry
	for _, s := range o.Revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: o.ThisUpdate})
	}
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(o.ThisUpdate.Unix()), ThisUpdate: o.ThisUpdate, NextUpdate: o.NextUpdate,
		SignatureAlgorithm: x509.SHA384WithRSAPSS, RevokedCertificateEntries: entries,
	}, c.ARK, c.Keys.ARK)
}

// WriteBundle writes the chain's KDS collateral into dir in snp.Collateral's
// layout: both cert_chains, both CRLs and the VCEK at its KDS URL.
func (c *Chain) WriteBundle(dir string, o BundleOptions) error {
	crl, err := c.CRL(o)
	if err != nil {
		return err
	}
	pemChain := func(ica *x509.Certificate) []byte {
		return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ica.Raw}),
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.ARK.Raw})...)
	}
	files := map[string][]byte{
		kds.ProductCertChainURL(abi.VcekReportSigner, c.Product):       pemChain(c.ASK),
		kds.ProductCertChainURL(abi.VlekReportSigner, c.Product):       pemChain(c.ASVK),
		kds.CrlLinkByKey(c.Product, abi.VcekReportSigner):              crl,
		kds.CrlLinkByKey(c.Product, abi.VlekReportSigner):              crl,
		kds.VCEKCertURL(c.Product, c.ChipID[:], kds.TCBVersion(c.TCB)): c.VCEK.Raw,
	}
	for u, b := range files {
		rel, err := snp.BundlePath(u)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Revoke rewrites the bundle's CRLs in dir so they list serials.
func (c *Chain) Revoke(dir string, serials ...*big.Int) error {
	return c.WriteBundle(dir, BundleOptions{Revoked: serials})
}

// Reference accepts exactly what Report produces.
func (c *Chain) Reference() *attest.Reference {
	return &attest.Reference{
		Profile:  "snp-test",
		Platform: attest.PlatformSNP,
		SNP: &attest.SNPReference{
			Product:       c.Product,
			Measurement:   bytes.Clone(DefaultMeasurement),
			HostData:      bytes.Clone(DefaultHostData),
			MinGuestSVN:   1,
			MinTCB:        snp.DecomposeTCB(c.Product, c.TCB),
			MinBuild:      Build,
			MinAPIVersion: APIMajor<<8 | APIMinor,
		},
	}
}
