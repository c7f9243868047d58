package snp_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
)

var (
	chainOnce sync.Once
	chain     *snptest.Chain
	chainErr  error
)

// testChain is shared: building one signs five certificates with RSA-4096.
func testChain(t testing.TB) *snptest.Chain {
	t.Helper()
	chainOnce.Do(func() { chain, chainErr = snptest.NewChain(snptest.ChainOptions{}) })
	if chainErr != nil {
		t.Fatalf("NewChain: %v", chainErr)
	}
	return chain
}

type fixture struct {
	chain *snptest.Chain
	dir   string
	v     *snp.Verifier
	in    attest.Input
}

func testBinding(nonce byte) attest.Binding {
	return attest.Binding{Role: attest.RoleNode, ClusterID: "c1",
		Exporter: bytes.Repeat([]byte{7}, attest.ExporterSize), Nonce: bytes.Repeat([]byte{nonce}, attest.NonceSize),
		ClaimsDigest: sha512.Sum512_256([]byte("claims"))}
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	c := testChain(t)
	dir := t.TempDir()
	if err := c.WriteBundle(dir, snptest.BundleOptions{}); err != nil {
		t.Fatalf("WriteBundle: %v", err)
	}
	return &fixture{
		chain: c, dir: dir,
		v:  &snp.Verifier{Roots: c.Roots(), Getter: &snp.Collateral{Dir: dir}},
		in: attest.Input{Binding: testBinding(1), Reference: c.Reference()},
	}
}

// evidence signs the default report for the fixture's binding after mutate.
func (f *fixture) evidence(t testing.TB, mutate func(*spb.Report)) *attest.Evidence {
	t.Helper()
	r := f.chain.Report(f.in.Binding.SHA512())
	if mutate != nil {
		mutate(r)
	}
	raw, err := f.chain.Sign(r)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return &attest.Evidence{Platform: attest.PlatformSNP, Blobs: map[string][]byte{
		snp.BlobReport: raw, snp.BlobCerts: f.chain.CertTable()}}
}

func (f *fixture) wantVerified() *attest.Verified {
	return &attest.Verified{
		Platform:   attest.PlatformSNP,
		Profile:    "snp-test",
		HardwareID: hex.EncodeToString(snptest.DefaultChipID[:]),
		TCB:        "0x7308000000000003 (bl=3 tee=0 snp=8 ucode=115)",
		Measurements: map[string]string{
			"measurement": hex.EncodeToString(snptest.DefaultMeasurement),
			"host_data":   hex.EncodeToString(snptest.DefaultHostData),
		},
	}
}

func TestVerifyEndToEnd(t *testing.T) {
	f := newFixture(t)
	a := &snp.Attester{Transport: &snptest.Transport{Chain: f.chain}}
	if id, err := a.Identity(context.Background()); id != nil || err != nil {
		t.Fatalf("Identity() = %v, %v; want nil, nil", id, err)
	}
	ev, err := a.Attest(context.Background(), nil, f.in.Binding)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if len(ev.Blobs[snp.BlobReport]) != abi.ReportSize {
		t.Fatalf("report blob is %d bytes", len(ev.Blobs[snp.BlobReport]))
	}
	got, err := f.v.Verify(context.Background(), ev, f.in)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if d := cmp.Diff(f.wantVerified(), got); d != "" {
		t.Errorf("Verified (-want +got):\n%s", d)
	}
}

func TestVerifyFetchesVCEKFromBundle(t *testing.T) {
	f := newFixture(t)
	ev := f.evidence(t, nil)
	delete(ev.Blobs, snp.BlobCerts)
	got, err := f.v.Verify(context.Background(), ev, f.in)
	if err != nil {
		t.Fatalf("Verify without certs: %v", err)
	}
	if d := cmp.Diff(f.wantVerified(), got); d != "" {
		t.Errorf("Verified (-want +got):\n%s", d)
	}
}

func TestVerifyVLEK(t *testing.T) {
	f := newFixture(t)
	f.in.Reference.SNP.AllowVLEK = true
	ev := f.evidence(t, func(r *spb.Report) {
		r.SignerInfo = abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VlekReportSigner})
	})
	ev.Blobs[snp.BlobCerts] = f.chain.CertTableVLEK()
	if _, err := f.v.Verify(context.Background(), ev, f.in); err != nil {
		t.Fatalf("Verify VLEK report with AllowVLEK: %v", err)
	}
}

func TestAttesterRejects(t *testing.T) {
	f := newFixture(t)
	a := &snp.Attester{Transport: &snptest.Transport{Chain: f.chain}}
	if _, err := a.Attest(context.Background(), []byte("x"), f.in.Binding); err == nil {
		t.Error("Attest with a challenge: want error")
	}
	if _, err := a.Attest(context.Background(), nil, attest.Binding{}); err == nil {
		t.Error("Attest with an invalid binding: want error")
	}
	// A transport that answers for other report data is caught.
	wrong := &snp.Attester{Transport: &snptest.Transport{Chain: f.chain, Report: func([64]byte) *spb.Report {
		return f.chain.Report([64]byte{1})
	}}}
	if _, err := wrong.Attest(context.Background(), nil, f.in.Binding); err == nil || !strings.Contains(err.Error(), "REPORT_DATA") {
		t.Errorf("Attest with a confused transport: %v, want REPORT_DATA error", err)
	}
}

func TestVerifyDefaultsDenyWithoutCollateral(t *testing.T) {
	f := newFixture(t)
	// Roots pinned but no Getter: the default getter refuses the network,
	// so there is no CRL and the evidence is denied, not waved through.
	v := &snp.Verifier{Roots: f.chain.Roots()}
	_, err := v.Verify(context.Background(), f.evidence(t, nil), f.in)
	if attest.ClassOf(err) != attest.ClassCollateral || !strings.Contains(err.Error(), "network fetch disabled") {
		t.Fatalf("Verify with default getter: %v, want collateral denial naming the disabled network", err)
	}
	// With AMD's production roots (Roots nil) the test chain is not trusted.
	v = &snp.Verifier{Getter: &snp.Collateral{Dir: f.dir}}
	_, err = v.Verify(context.Background(), f.evidence(t, nil), f.in)
	if attest.ClassOf(err) != attest.ClassChain {
		t.Fatalf("Verify test chain against AMD roots: %v, want chain denial", err)
	}
}

func TestDeny(t *testing.T) {
	ctx := context.Background()
	type tc struct {
		name string
		// setup changes exactly one thing and returns the evidence.
		setup func(t *testing.T, f *fixture) *attest.Evidence
		class attest.Class
		msg   string
	}
	mutate := func(m func(*spb.Report)) func(*testing.T, *fixture) *attest.Evidence {
		return func(t *testing.T, f *fixture) *attest.Evidence { return f.evidence(t, m) }
	}
	withCert := func(t *testing.T, f *fixture, ek *x509.Certificate) *attest.Evidence {
		ev := f.evidence(t, nil)
		tbl, err := snptest.CertTable(map[string][]byte{abi.ArkGUID: f.chain.ARK.Raw, abi.AskGUID: f.chain.ASK.Raw, abi.VcekGUID: ek.Raw})
		if err != nil {
			t.Fatal(err)
		}
		ev.Blobs[snp.BlobCerts] = tbl
		return ev
	}
	tcbWith := func(f *fixture, m func(*attest.SNPTCB)) uint64 {
		p := snp.DecomposeTCB("Milan", f.chain.TCB)
		m(&p)
		return snp.ComposeTCB("Milan", p)
	}
	cases := []tc{
		{"root-from-evidence", func(t *testing.T, f *fixture) *attest.Evidence {
			keys, err := snptest.GenerateKeys(2048)
			if err != nil {
				t.Fatal(err)
			}
			own, err := snptest.NewChain(snptest.ChainOptions{Keys: keys, NotBefore: f.chain.NotBefore})
			if err != nil {
				t.Fatal(err)
			}
			raw, err := own.Sign(own.Report(f.in.Binding.SHA512()))
			if err != nil {
				t.Fatal(err)
			}
			return &attest.Evidence{Platform: attest.PlatformSNP, Blobs: map[string][]byte{
				snp.BlobReport: raw, snp.BlobCerts: own.CertTable()}}
		}, attest.ClassChain, "chain to pinned Milan roots"},
		{"forged-chain", func(t *testing.T, f *fixture) *attest.Evidence {
			// Same VCEK key and fields, certified by an ASK that is not pinned.
			keys, err := snptest.GenerateKeys(2048)
			if err != nil {
				t.Fatal(err)
			}
			keys.VCEK = f.chain.Keys.VCEK
			other, err := snptest.NewChain(snptest.ChainOptions{Keys: keys, NotBefore: f.chain.NotBefore})
			if err != nil {
				t.Fatal(err)
			}
			return withCert(t, f, other.VCEK)
		}, attest.ClassChain, "chain to pinned Milan roots"},
		{"bad-report-signature", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			ev.Blobs[snp.BlobReport][0x2A0] ^= 1 // first byte of R
			return ev
		}, attest.ClassChain, "signature"},
		{"wrong-product", mutate(func(r *spb.Report) { r.Cpuid1EaxFms = snptest.FMS("Genoa") }),
			attest.ClassChain, `product "Genoa"`},
		{"revoked-vcek", func(t *testing.T, f *fixture) *attest.Evidence {
			if err := f.chain.Revoke(f.dir, f.chain.VCEK.SerialNumber); err != nil {
				t.Fatal(err)
			}
			return f.evidence(t, nil)
		}, attest.ClassRevoked, "VCEK certificate serial"},
		{"revoked-ask", func(t *testing.T, f *fixture) *attest.Evidence {
			if err := f.chain.Revoke(f.dir, f.chain.ASK.SerialNumber); err != nil {
				t.Fatal(err)
			}
			return f.evidence(t, nil)
		}, attest.ClassRevoked, "ASK certificate serial"},
		{"expired-collateral", func(t *testing.T, f *fixture) *attest.Evidence {
			nb := f.chain.NotBefore.AddDate(-8, 0, 0)
			ek, err := f.chain.IssueVCEK(snptest.VCEKOptions{NotBefore: nb, NotAfter: f.chain.NotBefore})
			if err != nil {
				t.Fatal(err)
			}
			return withCert(t, f, ek)
		}, attest.ClassCollateral, "VCEK certificate expired"},
		{"stale-crl", func(t *testing.T, f *fixture) *attest.Evidence {
			now := time.Now()
			if err := f.chain.WriteBundle(f.dir, snptest.BundleOptions{ThisUpdate: now.Add(-48 * time.Hour), NextUpdate: now.Add(-time.Hour)}); err != nil {
				t.Fatal(err)
			}
			return f.evidence(t, nil)
		}, attest.ClassCollateral, "stale"},
		{"crl-missing", func(t *testing.T, f *fixture) *attest.Evidence {
			f.v.Getter = &snp.Collateral{Dir: t.TempDir()}
			return f.evidence(t, nil)
		}, attest.ClassCollateral, "CRL https://kdsintf.amd.com/vcek/v1/Milan/crl unavailable"},
		{"crl-not-signed-by-ark", func(t *testing.T, f *fixture) *attest.Evidence {
			keys, err := snptest.GenerateKeys(2048)
			if err != nil {
				t.Fatal(err)
			}
			other, err := snptest.NewChain(snptest.ChainOptions{Keys: keys})
			if err != nil {
				t.Fatal(err)
			}
			if err := other.WriteBundle(f.dir, snptest.BundleOptions{}); err != nil {
				t.Fatal(err)
			}
			return f.evidence(t, nil)
		}, attest.ClassChain, "not signed by the pinned ARK"},
		{"vcek-tcb-mismatch", func(t *testing.T, f *fixture) *attest.Evidence {
			tcb := tcbWith(f, func(p *attest.SNPTCB) { p.Microcode++ })
			ek, err := f.chain.IssueVCEK(snptest.VCEKOptions{TCB: &tcb})
			if err != nil {
				t.Fatal(err)
			}
			return withCert(t, f, ek)
		}, attest.ClassTCB, "≠ report REPORTED_TCB"},
		{"wrong-chip-id", mutate(func(r *spb.Report) { r.ChipId[0] ^= 0xff }),
			attest.ClassChain, "CHIP_ID"},
		{"tcb-below-minimum", func(t *testing.T, f *fixture) *attest.Evidence {
			f.in.Reference.SNP.MinTCB.SNP++
			return f.evidence(t, nil)
		}, attest.ClassTCB, "REPORTED_TCB 0x7308000000000003 (bl=3 tee=0 snp=8 ucode=115) below the minimum"},
		{"launch-tcb-below-minimum", mutate(func(r *spb.Report) {
			r.LaunchTcb = snp.ComposeTCB("Milan", attest.SNPTCB{BootLoader: 3, SNP: 8, Microcode: 114})
		}), attest.ClassTCB, "LAUNCH_TCB"},
		{"committed-tcb-below-reported", mutate(func(r *spb.Report) {
			r.CommittedTcb = snp.ComposeTCB("Milan", attest.SNPTCB{BootLoader: 3, SNP: 7, Microcode: 115})
		}), attest.ClassTCB, "COMMITTED_TCB 0x7307000000000003 (bl=3 tee=0 snp=7 ucode=115) below REPORTED_TCB"},
		{"provisional-firmware", mutate(func(r *spb.Report) {
			r.CurrentTcb = snp.ComposeTCB("Milan", attest.SNPTCB{BootLoader: 3, SNP: 9, Microcode: 115})
		}), attest.ClassTCB, "≠ CURRENT_TCB"},
		{"provisional-build", mutate(func(r *spb.Report) { r.CurrentBuild++ }),
			attest.ClassTCB, "committed firmware"},
		{"build-below-minimum", func(t *testing.T, f *fixture) *attest.Evidence {
			f.in.Reference.SNP.MinBuild = snptest.Build + 1
			return f.evidence(t, nil)
		}, attest.ClassTCB, "CURRENT_BUILD"},
		{"api-below-minimum", func(t *testing.T, f *fixture) *attest.Evidence {
			f.in.Reference.SNP.MinAPIVersion = snptest.APIMajor<<8 | (snptest.APIMinor + 1)
			return f.evidence(t, nil)
		}, attest.ClassTCB, "firmware API"},
		{"debug-policy", mutate(func(r *spb.Report) { r.Policy |= 1 << 19 }),
			attest.ClassPolicy, "POLICY.DEBUG"},
		{"migration-agent", mutate(func(r *spb.Report) { r.Policy |= 1 << 18 }),
			attest.ClassPolicy, "POLICY.MIGRATE_MA"},
		{"smt-not-allowed", mutate(func(r *spb.Report) { r.Policy |= 1 << 16 }),
			attest.ClassPolicy, "POLICY.SMT"},
		{"cxl-allowed", mutate(func(r *spb.Report) { r.Policy |= 1 << 21 }),
			attest.ClassPolicy, "POLICY.CXL_ALLOW"},
		{"policy-abi-above-firmware", mutate(func(r *spb.Report) { r.Policy = r.Policy&^0xffff | 2<<8 }),
			attest.ClassPolicy, "POLICY.ABI"},
		{"platform-smt", mutate(func(r *spb.Report) { r.PlatformInfo |= 1 }),
			attest.ClassPolicy, "PLATFORM_INFO.SMT_EN"},
		{"vmpl-nonzero", mutate(func(r *spb.Report) { r.Vmpl = 1 }),
			attest.ClassPolicy, "report VMPL 1, want 0"},
		{"guest-svn-below-minimum", mutate(func(r *spb.Report) { r.GuestSvn = 0 }),
			attest.ClassPolicy, "GUEST_SVN 0 below the minimum 1"},
		{"chip-id-masked", mutate(func(r *spb.Report) {
			r.SignerInfo = abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VcekReportSigner, MaskChipKey: true})
		}), attest.ClassPolicy, "masked"},
		{"vlek-not-allowed", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, func(r *spb.Report) {
				r.SignerInfo = abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VlekReportSigner})
			})
			ev.Blobs[snp.BlobCerts] = f.chain.CertTableVLEK()
			return ev
		}, attest.ClassChain, "allows only a VCEK"},
		{"binding-mismatch", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			f.in.Binding = testBinding(2) // the verifier's session has another nonce
			return ev
		}, attest.ClassBinding, "REPORT_DATA"},
		{"wrong-measurement", mutate(func(r *spb.Report) { r.Measurement[47] ^= 1 }),
			attest.ClassMeasurement, "MEASUREMENT"},
		{"wrong-host-data", mutate(func(r *spb.Report) { r.HostData[0] ^= 1 }),
			attest.ClassMeasurement, "HOST_DATA"},
		{"wrong-family-id", mutate(func(r *spb.Report) { r.FamilyId[0] = 1 }),
			attest.ClassMeasurement, "FAMILY_ID"},
		{"wrong-image-id", mutate(func(r *spb.Report) { r.ImageId[0] = 1 }),
			attest.ClassMeasurement, "IMAGE_ID"},
		{"truncated-report", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			ev.Blobs[snp.BlobReport] = ev.Blobs[snp.BlobReport][:abi.ReportSize-1]
			return ev
		}, attest.ClassMalformed, "1183 bytes, want 1184"},
		{"oversized-evidence", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			ev.Blobs[snp.BlobReport] = append(ev.Blobs[snp.BlobReport], 0)
			return ev
		}, attest.ClassMalformed, "1185 bytes, want 1184"},
		{"oversized-certs", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			ev.Blobs[snp.BlobCerts] = append(ev.Blobs[snp.BlobCerts], make([]byte, snp.MaxCertTableSize)...)
			return ev
		}, attest.ClassMalformed, "at most 65536"},
		{"oversized-blob", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			ev.Blobs[snp.BlobCerts] = make([]byte, attest.MaxBlobSize+1)
			return ev
		}, attest.ClassMalformed, "at most 1048576"},
		{"unknown-blob", func(t *testing.T, f *fixture) *attest.Evidence {
			ev := f.evidence(t, nil)
			ev.Blobs["quote"] = []byte{1}
			return ev
		}, attest.ClassMalformed, `unknown blob "quote"`},
		{"unsigned-report", mutate(func(r *spb.Report) {
			r.SignerInfo = abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.NoneReportSigner})
		}), attest.ClassChain, "SIGNING_KEY is None"},
	}

	// Every subtest's starting point verifies.
	f := newFixture(t)
	if _, err := f.v.Verify(ctx, f.evidence(t, nil), f.in); err != nil {
		t.Fatalf("valid evidence: %v", err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			ev := c.setup(t, f)
			got, err := f.v.Verify(ctx, ev, f.in)
			if err == nil {
				t.Fatalf("Verify = %+v, nil; want a %s denial", got, c.class)
			}
			if got != nil {
				t.Errorf("Verify returned %+v with a denial", got)
			}
			if cl := attest.ClassOf(err); cl != c.class {
				t.Errorf("class %q (%v), want %q", cl, err, c.class)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not name %q", err, c.msg)
			}
		})
	}
}

// TestLibraryGate checks that the go-sev-guest validate options the verifier
// builds are complete: each report change that the verifier's own checks
// deny is denied by the library alone, too.
func TestLibraryGate(t *testing.T) {
	f := newFixture(t)
	exts, err := kds.VcekCertificateExtensions(f.chain.VCEK)
	if err != nil {
		t.Fatal(err)
	}
	ref := f.in.Reference.SNP
	rd := f.in.Binding.SHA512()
	run := func(r *spb.Report, ek *x509.Certificate) error {
		att := &spb.Attestation{Report: r, CertificateChain: &spb.CertificateChain{VcekCert: ek.Raw}}
		return validate.SnpAttestation(att, snp.LibraryOptions(r, abi.VcekReportSigner, exts, ref, rd,
			ref.HostData, make([]byte, 16), make([]byte, 16)))
	}
	// REPORTED_TCB alone below a raised minimum (LAUNCH_TCB meets it).
	raised := *ref
	raised.MinTCB.SNP++
	r := f.chain.Report(rd)
	r.LaunchTcb = snp.ComposeTCB("Milan", raised.MinTCB)
	att := &spb.Attestation{Report: r, CertificateChain: &spb.CertificateChain{VcekCert: f.chain.VCEK.Raw}}
	if err := validate.SnpAttestation(att, snp.LibraryOptions(r, abi.VcekReportSigner, exts, &raised, rd,
		ref.HostData, make([]byte, 16), make([]byte, 16))); err == nil {
		t.Errorf("min-tcb: go-sev-guest validate accepted REPORTED_TCB below the minimum")
	}
	if err := run(f.chain.Report(rd), f.chain.VCEK); err != nil {
		t.Fatalf("valid report: %v", err)
	}
	for name, m := range map[string]func(*spb.Report){
		"debug":       func(r *spb.Report) { r.Policy |= 1 << 19 },
		"migrate-ma":  func(r *spb.Report) { r.Policy |= 1 << 18 },
		"smt":         func(r *spb.Report) { r.Policy |= 1 << 16 },
		"cxl":         func(r *spb.Report) { r.Policy |= 1 << 21 },
		"vmpl":        func(r *spb.Report) { r.Vmpl = 1 },
		"measurement": func(r *spb.Report) { r.Measurement[0] ^= 1 },
		"host-data":   func(r *spb.Report) { r.HostData[0] ^= 1 },
		"family-id":   func(r *spb.Report) { r.FamilyId[0] = 1 },
		"image-id":    func(r *spb.Report) { r.ImageId[0] = 1 },
		"report-data": func(r *spb.Report) { r.ReportData[0] ^= 1 },
		"chip-id":     func(r *spb.Report) { r.ChipId[0] ^= 1 },
		"guest-svn":   func(r *spb.Report) { r.GuestSvn = 0 },
		"committed":   func(r *spb.Report) { r.CommittedTcb-- },
		"reported":    func(r *spb.Report) { r.ReportedTcb-- },
		"launch":      func(r *spb.Report) { r.LaunchTcb = 3 },
		"build":       func(r *spb.Report) { r.CurrentBuild--; r.CommittedBuild-- },
		"api":         func(r *spb.Report) { r.CurrentMinor--; r.CommittedMinor-- },
		"platform":    func(r *spb.Report) { r.PlatformInfo |= 1 },
	} {
		r := f.chain.Report(rd)
		m(r)
		if err := run(r, f.chain.VCEK); err == nil {
			t.Errorf("%s: go-sev-guest validate accepted the changed report", name)
		}
	}
}

func TestCollateral(t *testing.T) {
	dir, cache := t.TempDir(), t.TempDir()
	c := testChain(t)
	if err := c.WriteBundle(dir, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	u := kds.VCEKCertURL("Milan", c.ChipID[:], kds.TCBVersion(c.TCB))
	got, err := (&snp.Collateral{Dir: dir}).Get(u)
	if err != nil || !bytes.Equal(got, c.VCEK.Raw) {
		t.Fatalf("Get(%s) from bundle = %d bytes, %v; want the VCEK", u, len(got), err)
	}
	// Not in the bundle, network off: a refusal that says so.
	_, err = (&snp.Collateral{Dir: dir, CacheDir: cache}).Get("https://kdsintf.amd.com/vcek/v1/Genoa/crl")
	if err == nil || !strings.Contains(err.Error(), "network fetch disabled") {
		t.Fatalf("Get of an absent URL: %v, want network-disabled error", err)
	}
	// Network on (a fake fetcher): fetched once, written to the cache,
	// then served from it.
	fetch := &countingGetter{body: []byte("crl")}
	col := &snp.Collateral{CacheDir: cache, Network: true, Fetch: fetch}
	for i := 0; i < 2; i++ {
		b, err := col.Get("https://kdsintf.amd.com/vcek/v1/Genoa/crl")
		if err != nil || string(b) != "crl" {
			t.Fatalf("Get #%d = %q, %v", i, b, err)
		}
	}
	if fetch.n != 1 {
		t.Errorf("network fetches = %d, want 1 (second from cache)", fetch.n)
	}
	for _, bad := range []string{"http://kdsintf.amd.com/vcek/v1/Milan/crl", "https://kdsintf.amd.com/../etc/passwd",
		"https://kdsintf.amd.com/vcek/v1/Milan/x?a=../../b", "https://u@kdsintf.amd.com/x", "file:///etc/passwd"} {
		if p, err := snp.BundlePath(bad); err == nil {
			t.Errorf("BundlePath(%q) = %q, want error", bad, p)
		}
	}
	p, err := snp.BundlePath("https://kdsintf.amd.com/vcek/v1/Milan/abcd?ucodeSPL=115&blSPL=3&teeSPL=0&snpSPL=8")
	if want := "kdsintf.amd.com/vcek/v1/Milan/abcd/blSPL=3,snpSPL=8,teeSPL=0,ucodeSPL=115"; err != nil || p != want {
		t.Errorf("BundlePath = %q, %v; want %q", p, err, want)
	}
}

type countingGetter struct {
	body []byte
	n    int
}

func (g *countingGetter) Get(string) ([]byte, error) { g.n++; return g.body, nil }

func TestParseRoots(t *testing.T) {
	roots, err := snp.AMDRoots()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"Milan", "Genoa", "Turin"} {
		r := roots[p]
		if r == nil || r.ARK.Subject.CommonName != "ARK-"+p || r.ASK.Subject.CommonName != "SEV-"+p || r.ASVK.Subject.CommonName != "SEV-VLEK-"+p {
			t.Errorf("AMDRoots()[%s] = %+v", p, r)
		}
	}
	if _, err := snp.ParseRoots([]byte("junk"), nil); err == nil {
		t.Error("ParseRoots(junk): want error")
	}
}

func TestTCBLayout(t *testing.T) {
	for _, p := range []string{"Milan", "Turin"} {
		in := attest.SNPTCB{BootLoader: 1, TEE: 2, SNP: 3, Microcode: 4}
		if p == "Turin" {
			in.FMC = 5
		}
		if got := snp.DecomposeTCB(p, snp.ComposeTCB(p, in)); got != in {
			t.Errorf("%s: round trip %+v → %+v", p, in, got)
		}
	}
	if got := snp.ComposeTCB("Milan", attest.SNPTCB{BootLoader: 3, SNP: 8, Microcode: 115}); got != 0x7308000000000003 {
		t.Errorf("Milan TCB = %#x", got)
	}
}

func BenchmarkVerify(b *testing.B) {
	f := newFixture(b)
	ev := f.evidence(b, nil)
	ctx := context.Background()
	if _, err := f.v.Verify(ctx, ev, f.in); err != nil { // warms the CRL cache
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.v.Verify(ctx, ev, f.in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor times only the signature checks Verify performs per
// report: the ECDSA P-384 report signature and VCEK ← ASK ← ARK (two
// RSA-PSS verifications; the pinned ARK's self-signature is not re-checked
// and the CRL's is cached).
func BenchmarkFloor(b *testing.B) {
	f := newFixture(b)
	raw := f.evidence(b, nil).Blobs[snp.BlobReport]
	der, err := abi.ReportToSignatureDER(raw)
	if err != nil {
		b.Fatal(err)
	}
	signed := abi.SignedComponent(raw)
	vcek, ask, ark := f.chain.VCEK, f.chain.ASK, f.chain.ARK
	if _, ok := vcek.PublicKey.(*ecdsa.PublicKey); !ok {
		b.Fatal("VCEK key is not ECDSA")
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := vcek.CheckSignature(x509.ECDSAWithSHA384, signed, der); err != nil {
			b.Fatal(err)
		}
		if err := vcek.CheckSignatureFrom(ask); err != nil {
			b.Fatal(err)
		}
		if err := ask.CheckSignatureFrom(ark); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPickTransport(t *testing.T) {
	dir := t.TempDir()
	tsm, dev := filepath.Join(dir, "tsm", "report"), filepath.Join(dir, "sev-guest")
	if _, err := snp.PickTransport(tsm, dev); err == nil || !strings.Contains(err.Error(), tsm) || !strings.Contains(err.Error(), dev) {
		t.Errorf("neither interface: %v, want an error naming both", err)
	}
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if tr, err := snp.PickTransport(tsm, dev); err != nil || tr != (snp.DeviceTransport{}) {
		t.Errorf("device only: %T, %v; want DeviceTransport", tr, err)
	}
	if err := os.MkdirAll(tsm, 0o755); err != nil {
		t.Fatal(err)
	}
	if tr, err := snp.PickTransport(tsm, dev); err != nil || tr != (snp.ConfigFSTransport{}) {
		t.Errorf("both: %T, %v; want ConfigFSTransport (preferred)", tr, err)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	f := newFixture(t)
	ev := f.evidence(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.v.Verify(context.Background(), ev, f.in)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
