package tpm

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// TestFlow runs Identity → Challenge → Attest → Verify against the
// simulator, for both EK types, and checks what was verified.
func TestFlow(t *testing.T) {
	for _, rsa := range []bool{false, true} {
		t.Run(fmt.Sprintf("rsa-ek=%v", rsa), func(t *testing.T) {
			f := newFixture(t, tpmtest.Config{RSA: rsa}, nil)
			got, err := f.verify(f.evidence(), f.input())
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			cert, err := x509.ParseCertificate(f.sim.EKCert)
			if err != nil {
				t.Fatal(err)
			}
			spki, _ := x509.MarshalPKIXPublicKey(cert.PublicKey)
			hw := sha256.Sum256(spki)
			want := &attest.Verified{Platform: attest.PlatformTPM, Profile: "test-profile",
				HardwareID: hex.EncodeToString(hw[:]), TCB: got.TCB, Measurements: map[string]string{}}
			for _, i := range tpmtest.ReferencePCRs {
				want.Measurements[fmt.Sprintf("PCR%d", i)] = hex.EncodeToString(f.sim.Log.PCRs[i])
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Verified (-want +got):\n%s", diff)
			}
			if got.TCB == "" {
				t.Error("TCB empty")
			}

			// The same identity is announced again (the AK is a primary
			// key: same TPM, same AK), and a second round verifies too.
			id2, err := f.att.Identity(context.Background())
			if err != nil || !cmp.Equal(id2, f.id) {
				t.Fatalf("second Identity differs or failed: %v", err)
			}
			send, keep, err := f.ver.Challenge(id2)
			if err != nil {
				t.Fatal(err)
			}
			b := testBinding(2)
			ev, err := f.att.Attest(context.Background(), send, b)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.ver.Verify(context.Background(), ev, attest.Input{Binding: b, Identity: id2, Kept: keep, Reference: f.ref}); err != nil {
				t.Fatalf("second round: %v", err)
			}
			// An answer to the first challenge does not pass for the second.
			if _, err := f.ver.Verify(context.Background(), f.evidence(), attest.Input{Binding: f.binding, Identity: id2, Kept: keep, Reference: f.ref}); attest.ClassOf(err) != attest.ClassChain {
				t.Fatalf("old activation under a new challenge: %v, want a chain denial", err)
			}
		})
	}
}

// TestEventLogOnDisk checks that the attester sends the log file as is and
// that a missing log is an error, not empty evidence.
func TestEventLogOnDisk(t *testing.T) {
	f := newFixture(t, tpmtest.Config{}, nil)
	if !cmp.Equal(f.ev.Blobs[BlobEventLog], f.sim.Log.Bytes) {
		t.Fatal("eventlog blob differs from the file")
	}
	f.att.opts.EventLogPath = t.TempDir() + "/missing"
	if _, err := f.att.Attest(context.Background(), f.send, f.binding); err == nil {
		t.Fatal("Attest with a missing event log succeeded")
	}
}
