package build

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/images/uki"
	"github.com/palisade-cc/palisade/internal/attest"
)

// testUKI builds a small UKI on the system's systemd-stub, with the stub
// itself standing in as the inner kernel (any PE serves the Authenticode).
func testUKI(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	for n, b := range map[string][]byte{"osrel": []byte("ID=palisade\n"), "cmdline": []byte("console=ttyS0\x00"), "initrd": []byte("initrd\n")} {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "uki.efi")
	secs := []uki.Section{{Name: ".osrel", Path: filepath.Join(dir, "osrel")}, {Name: ".cmdline", Path: filepath.Join(dir, "cmdline")},
		{Name: ".initrd", Path: filepath.Join(dir, "initrd")}, {Name: ".linux", Path: uki.DefaultStub}}
	if err := uki.Build(context.Background(), "", uki.DefaultStub, secs, out, 1); err != nil {
		t.Fatalf("%v (scripts/deps.sh installs systemd-boot-efi and binutils)", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func firmwarePCRs(b byte) map[int]attest.HexBytes {
	m := map[int]attest.HexBytes{}
	for _, i := range FirmwarePCRs {
		m[i] = bytes.Repeat([]byte{b + byte(i)}, 32)
	}
	return m
}

// TestTPMReferencesFirmware: without firmware profiles the references pin
// only the image's PCRs; with one, each reference pins its firmware PCRs as
// recorded and the image's as predicted, and no unpinned reference remains.
func TestTPMReferencesFirmware(t *testing.T) {
	ub := testUKI(t)
	plain, err := tpmReferences(ub, "production", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plain) != 2 || plain[0].Profile != "tpm-uefi-sb-off-production" || len(plain[0].TPM.PCRs) != 3 {
		t.Fatalf("unpinned references %+v", plain)
	}
	fw := TPMFirmware{Name: "rack-a", SecureBoot: false, PCRs: firmwarePCRs(0x10)}
	refs, err := tpmReferences(ub, "production", []TPMFirmware{fw})
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 1 || refs[0].Profile != "tpm-rack-a-sb-off-production" {
		t.Fatalf("references %+v, want only tpm-rack-a-sb-off-production", refs)
	}
	got := refs[0].TPM.PCRs
	for _, i := range FirmwarePCRs {
		if !bytes.Equal(got[i], fw.PCRs[i]) {
			t.Errorf("PCR%d = %x, want the recorded %x", i, got[i], fw.PCRs[i])
		}
	}
	for _, i := range []int{4, 9, 11} {
		if !bytes.Equal(got[i], plain[0].TPM.PCRs[i]) {
			t.Errorf("PCR%d = %x, want the image's %x", i, got[i], plain[0].TPM.PCRs[i])
		}
	}
	if err := refs[0].Validate(); err != nil {
		t.Error(err)
	}
}

func TestTPMFirmwareValidate(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		edit       func(*TPMFirmware)
	}{
		{"name", "name", func(f *TPMFirmware) { f.Name = "Rack A" }},
		{"pcr4", "pcrs[4]", func(f *TPMFirmware) { f.PCRs[4] = make(attest.HexBytes, 32) }},
		{"pcr8", "pcrs[8]", func(f *TPMFirmware) { f.PCRs[8] = make(attest.HexBytes, 32) }},
		{"no pcr0", "PCR 0 missing", func(f *TPMFirmware) { delete(f.PCRs, 0) }},
		{"no pcr7", "PCR 7 missing", func(f *TPMFirmware) { delete(f.PCRs, 7) }},
		{"size", "pcrs[1]", func(f *TPMFirmware) { f.PCRs[1] = make(attest.HexBytes, 20) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := TPMFirmware{Name: "rack-a", PCRs: firmwarePCRs(1)}
			if err := f.Validate(); err != nil {
				t.Fatalf("valid profile: %v", err)
			}
			tc.edit(&f)
			if err := f.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestFirmwareFromMeasurements(t *testing.T) {
	m := map[string]string{"PCR0": strings.Repeat("00", 32), "PCR1": strings.Repeat("11", 32), "PCR7": strings.Repeat("77", 32), "PCR4": strings.Repeat("44", 32)}
	f, err := FirmwareFromMeasurements("rack-a", true, m, []int{0, 1, 7})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.PCRs) != 3 || f.PCRs[7][0] != 0x77 || !f.SecureBoot {
		t.Errorf("profile %+v", f)
	}
	if _, err := FirmwareFromMeasurements("rack-a", false, m, []int{0, 2, 7}); err == nil || !strings.Contains(err.Error(), "PCR2") {
		t.Errorf("missing PCR2: %v", err)
	}
	if _, err := FirmwareFromMeasurements("rack-a", false, m, []int{0, 4, 7}); err == nil || !strings.Contains(err.Error(), "pcrs[4]") {
		t.Errorf("PCR4 taken from a boot: %v", err)
	}
}

func TestLoadTPMFirmware(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fw.json")
	write := func(s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pcr := `"` + strings.Repeat("ab", 32) + `"`
	one := `{"name":"rack-a","secure_boot":false,"pcrs":{"0":` + pcr + `,"7":` + pcr + `}}`
	write("[" + one + "]")
	if fws, err := LoadTPMFirmware(p); err != nil || len(fws) != 1 {
		t.Fatalf("LoadTPMFirmware = %v, %v", fws, err)
	}
	for name, s := range map[string]string{"repeated": "[" + one + "," + one + "]", "empty": "[]",
		"unknown field": `[{"name":"x","pcrs":{},"extra":1}]`} {
		write(s)
		if _, err := LoadTPMFirmware(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
