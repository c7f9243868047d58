package tpm

import (
	"bytes"
	"context"
	"maps"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// fixture is one full exchange against a provisioned simulator.
type fixture struct {
	sim        *tpmtest.TPM
	att        *Attester
	ver        *Verifier
	id         []byte
	send, keep []byte
	binding    attest.Binding
	ref        *attest.Reference
	ev         *attest.Evidence
}

func testBinding(nonce byte) attest.Binding {
	return attest.Binding{
		Role:      attest.RoleNode,
		ClusterID: "test-cluster",
		Exporter:  bytes.Repeat([]byte{0xE5}, attest.ExporterSize),
		Nonce:     bytes.Repeat([]byte{nonce}, attest.NonceSize),
	}
}

// newFixture starts a simulator with cfg, lets tweak change the attester
// and runs Identity → Challenge → Attest. The verifier pins cfg's CA (or
// the one Start made).
func newFixture(t testing.TB, cfg tpmtest.Config, tweak func(*Attester)) *fixture {
	t.Helper()
	f := &fixture{sim: tpmtest.Start(t, cfg), binding: testBinding(1)}
	var err error
	if f.att, err = NewAttester(f.sim.RW, Options{EventLogPath: f.sim.LogPath}); err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(f.att)
	}
	f.ver = NewVerifier(f.sim.CA.Roots(), f.sim.CA.Intermediates())
	f.ref = f.sim.Reference("test-profile")
	ctx := context.Background()
	if f.id, err = f.att.Identity(ctx); err != nil {
		t.Fatalf("Identity: %v", err)
	}
	if f.send, f.keep, err = f.ver.Challenge(f.id); err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	if f.ev, err = f.att.Attest(ctx, f.send, f.binding); err != nil {
		t.Fatalf("Attest: %v", err)
	}
	return f
}

func (f *fixture) input() attest.Input {
	return attest.Input{Binding: f.binding, Identity: f.id, Kept: f.keep, Reference: f.ref}
}

// evidence returns a deep copy of the fixture's evidence.
func (f *fixture) evidence() *attest.Evidence {
	ev := &attest.Evidence{Platform: f.ev.Platform, Blobs: maps.Clone(f.ev.Blobs)}
	for k, v := range ev.Blobs {
		ev.Blobs[k] = bytes.Clone(v)
	}
	return ev
}

func (f *fixture) verify(ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	return f.ver.Verify(context.Background(), ev, in)
}

// wantDeny fails unless err is a denial of class want.
func wantDeny(t *testing.T, err error, want attest.Class) {
	t.Helper()
	if err == nil {
		t.Fatalf("verified, want a denial of class %q", want)
	}
	if got := attest.ClassOf(err); got != want {
		t.Fatalf("denied with class %q (%v), want %q", got, err, want)
	}
	t.Logf("denied as expected: %v", err)
}

// akPubParsed is the attester's AK public area, parsed.
func (a *Attester) akPubParsed(t testing.TB) *tpm2.TPMTPublic {
	t.Helper()
	p, err := decodeAK(a.akPub)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
