package manifest

import (
	"bytes"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
)

// TestMinTCBApplied: the manifest-wide min_tcb reaches every SEV-SNP and
// TDX reference (nodes' and keyd's) component by component, so the
// verifiers, which read a reference's own floor, enforce it; a reference's
// own higher floor is kept.
func TestMinTCBApplied(t *testing.T) {
	m := testManifest(t, 1)
	r48 := bytes.Repeat([]byte{4}, 48)
	rtmr := [4]attest.HexBytes{r48, r48, r48, r48}
	svn := func(b byte) attest.HexBytes { s := make(attest.HexBytes, 16); s[0], s[1] = b, 1; return s }
	m.References = append(m.References,
		attest.Reference{Profile: "snp-1cpu", Platform: attest.PlatformSNP, SNP: &attest.SNPReference{Product: "Milan",
			Measurement: bytes.Repeat([]byte{1}, 48), MinTCB: attest.SNPTCB{BootLoader: 1, SNP: 10}}},
		attest.Reference{Profile: "tdx", Platform: attest.PlatformTDX, TDX: &attest.TDXReference{MRTD: bytes.Repeat([]byte{2}, 48),
			TDAttributes: make(attest.HexBytes, 8), XFAM: make(attest.HexBytes, 8), MinTEETCBSVN: svn(2), RTMR: rtmr}})
	m.Keyd = append(m.Keyd, attest.Reference{Profile: "keyd-snp", Platform: attest.PlatformSNP,
		SNP: &attest.SNPReference{Product: "Milan", Measurement: bytes.Repeat([]byte{3}, 48)}})
	f := svn(5)
	f[1] = 0
	m.MinTCB.TDXTEETCBSVN = f
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := attest.SNPTCB{BootLoader: 3, SNP: 10, Microcode: 115}
	if got := d.Reference("snp-1cpu").SNP.MinTCB; got != want {
		t.Errorf("node SNP min_tcb %+v, want %+v (component-wise max with the manifest's)", got, want)
	}
	if got := d.Keyd[1].SNP.MinTCB; got != (attest.SNPTCB{BootLoader: 3, SNP: 8, Microcode: 115}) {
		t.Errorf("keyd SNP min_tcb %+v, want the manifest's", got)
	}
	if got := d.Reference("tdx").TDX.MinTEETCBSVN; !bytes.Equal(got, svn(5)) {
		t.Errorf("TDX min_tee_tcb_svn %x, want %x", got, svn(5))
	}
	if d.Reference("tpm-uefi-sb-off-production").SNP != nil {
		t.Error("a TPM reference grew an SNP section")
	}
}
