package snp_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/google/go-sev-guest/abi"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
)

// FuzzReport feeds arbitrary bytes as the report blob (with a valid
// certificate table) through parsing and the whole verification: no input
// may panic, and none but the seed's own valid report may verify.
func FuzzReport(f *testing.F) {
	fx := newFixture(f)
	ev := fx.evidence(f, nil)
	valid := ev.Blobs[snp.BlobReport]
	f.Add(valid)
	f.Add(valid[:abi.ReportSize-1])
	f.Add(make([]byte, abi.ReportSize))
	f.Add([]byte{})
	v3 := append([]byte(nil), valid...)
	v3[0] = 5
	f.Add(v3)
	certs := ev.Blobs[snp.BlobCerts]
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, _ = abi.ReportToProto(raw)
		e := &attest.Evidence{Platform: attest.PlatformSNP, Blobs: map[string][]byte{snp.BlobReport: raw, snp.BlobCerts: certs}}
		got, err := fx.v.Verify(context.Background(), e, fx.in)
		// Seeds are signed in another process (ECDSA is randomised), so
		// compare what is signed: only the default report's contents, signed
		// by the test VCEK, may verify.
		if err == nil && !bytes.Equal(raw[:0x2A0], valid[:0x2A0]) {
			t.Fatalf("a changed report verified: %+v", got)
		}
		if err != nil && attest.ClassOf(err) == attest.ClassInternal {
			t.Fatalf("internal error on outside bytes: %v", err)
		}
	})
}

// FuzzCertTable feeds arbitrary bytes as the certificate table.
func FuzzCertTable(f *testing.F) {
	fx := newFixture(f)
	ev := fx.evidence(f, nil)
	f.Add(ev.Blobs[snp.BlobCerts])
	f.Add(fx.chain.CertTableVLEK())
	f.Add([]byte{})
	f.Add(make([]byte, abi.CertTableEntrySize))
	// An entry whose offset+length wraps around 32 bits.
	wrap := make([]byte, 2*abi.CertTableEntrySize)
	copy(wrap, []byte{0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd})
	copy(wrap[16:], []byte{0x30, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add(wrap)
	report := ev.Blobs[snp.BlobReport]
	f.Fuzz(func(t *testing.T, certs []byte) {
		_, _ = snp.ParseCertTable(certs)
		e := &attest.Evidence{Platform: attest.PlatformSNP, Blobs: map[string][]byte{snp.BlobReport: report, snp.BlobCerts: certs}}
		if _, err := fx.v.Verify(context.Background(), e, fx.in); err != nil && attest.ClassOf(err) == attest.ClassInternal {
			t.Fatalf("internal error on outside bytes: %v", err)
		}
	})
}

// FuzzParseEvidence exercises only the I/O-free parsers (report and
// certificate table), without signature checks, so it runs many more inputs
// per second than FuzzReport and FuzzCertTable.
func FuzzParseEvidence(f *testing.F) {
	fx := newFixture(f)
	ev := fx.evidence(f, nil)
	f.Add(ev.Blobs[snp.BlobReport], ev.Blobs[snp.BlobCerts])
	f.Add(ev.Blobs[snp.BlobReport][:100], fx.chain.CertTableVLEK())
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, report, certs []byte) {
		e := &attest.Evidence{Platform: attest.PlatformSNP, Blobs: map[string][]byte{snp.BlobReport: report, snp.BlobCerts: certs}}
		if _, err := snp.ParseEvidence(e); err != nil && attest.ClassOf(err) != attest.ClassMalformed {
			t.Fatalf("parse error of class %q, want malformed: %v", attest.ClassOf(err), err)
		}
	})
}
