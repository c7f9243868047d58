package tdx_test

import (
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

func fixture(t testing.TB) *tdxtest.Fixture {
	t.Helper()
	f, err := tdxtest.Shared()
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return f
}

func freshFixture(t testing.TB) *tdxtest.Fixture {
	t.Helper()
	f, err := tdxtest.NewFixture()
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return f
}

func verifierFor(f *tdxtest.Fixture) *tdx.Verifier {
	return &tdx.Verifier{Roots: f.PKI.Pool(), Getter: &tdx.Bundle{FS: f.Bundle},
		Now: func() time.Time { return tdxtest.Epoch }}
}

func evidence(t testing.TB, f *tdxtest.Fixture, b attest.Binding) *attest.Evidence {
	t.Helper()
	ev, err := f.Evidence(b)
	if err != nil {
		t.Fatalf("evidence: %v", err)
	}
	return ev
}

func TestVerifyEndToEnd(t *testing.T) {
	f := fixture(t)
	b := tdxtest.Binding(1)
	a := &tdx.Attester{Transport: &tdxtest.Transport{F: f}, CCELPath: writeCCEL(t, f.Log.Bytes(4096))}
	ev, err := a.Attest(context.Background(), nil, b)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	got, err := verifierFor(f).Verify(context.Background(), ev, attest.Input{Binding: b, Reference: f.Reference()})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	want := &attest.Verified{Platform: attest.PlatformTDX, Profile: "tdx-test",
		HardwareID: hex.EncodeToString(f.PKI.Platform.FMSPC[:]) + hex.EncodeToString(f.PKI.Platform.PPID[:]),
		TCB:        "UpToDate",
		Measurements: map[string]string{"mrtd": hex.EncodeToString(f.Body.MRTD[:]),
			"rtmr0": hex.EncodeToString(f.Body.RTMR[0][:]), "rtmr1": hex.EncodeToString(f.Body.RTMR[1][:]),
			"rtmr2": hex.EncodeToString(f.Body.RTMR[2][:]), "rtmr3": hex.EncodeToString(f.Body.RTMR[3][:])}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Verified (-want +got):\n%s", diff)
	}
}

func writeCCEL(t *testing.T, b []byte) string {
	t.Helper()
	p := t.TempDir() + "/CCEL"
	if err := writeFile(p, b); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAttesterErrors(t *testing.T) {
	f := fixture(t)
	b := tdxtest.Binding(2)
	a := &tdx.Attester{Transport: &tdxtest.Transport{F: f}, CCELPath: t.TempDir() + "/missing"}
	if _, err := a.Attest(context.Background(), nil, b); err == nil {
		t.Error("Attest without a CC event log succeeded")
	}
	a.CCELPath = writeCCEL(t, f.Log.Bytes(0))
	if _, err := a.Attest(context.Background(), []byte("challenge"), b); err == nil {
		t.Error("Attest accepted a challenge")
	}
	if _, err := a.Attest(context.Background(), nil, attest.Binding{}); err == nil {
		t.Error("Attest accepted an invalid binding")
	}
	a.CCELPath = writeCCEL(t, make([]byte, attest.MaxBlobSize+1))
	if _, err := a.Attest(context.Background(), nil, b); err == nil {
		t.Error("Attest accepted an oversized CC event log")
	}
	if id, err := a.Identity(context.Background()); id != nil || err != nil {
		t.Errorf("Identity = %x, %v; want nil, nil", id, err)
	}
}

func TestVerifyRejectsBadReference(t *testing.T) {
	f := fixture(t)
	b := tdxtest.Binding(4)
	ev := evidence(t, f, b)
	ref := f.Reference()
	ref.TDX.MRTD = ref.TDX.MRTD[:10]
	_, err := verifierFor(f).Verify(context.Background(), ev, attest.Input{Binding: b, Reference: ref})
	if attest.ClassOf(err) != attest.ClassInternal {
		t.Errorf("bad reference: %v, want class internal", err)
	}
	_, err = verifierFor(f).Verify(context.Background(), ev, attest.Input{Binding: b})
	if attest.ClassOf(err) != attest.ClassInternal {
		t.Errorf("no reference: %v, want class internal", err)
	}
}
