package build

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/measure"
)

// TPMFirmware is a TPM machine's firmware profile, recorded from a reference
// boot on trusted hardware: the PCRs its firmware, firmware configuration,
// boot configuration and Secure Boot policy produce (0–3, 5–7). Without one,
// a TPM reference pins only what the image decides (PCR4, 9, 11), so a node
// proves which UKI it booted but not on which firmware; with one, other
// firmware, a changed setting or another Secure Boot database is denied.
// PCR4 is never taken from the boot: it is the image's own (predicted).
type TPMFirmware struct {
	Name       string                  `json:"name"`
	SecureBoot bool                    `json:"secure_boot"`
	PCRs       map[int]attest.HexBytes `json:"pcrs"`
}

// FirmwarePCRs are the PCRs a firmware profile may pin.
var FirmwarePCRs = []int{0, 1, 2, 3, 5, 6, 7}

var tpmFirmwareName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Validate names the first bad field.
func (f *TPMFirmware) Validate() error {
	if !tpmFirmwareName.MatchString(f.Name) {
		return fmt.Errorf("name %q: want 1-32 of [a-z0-9-], alphanumeric at both ends", f.Name)
	}
	for _, i := range []int{0, 7} {
		if _, ok := f.PCRs[i]; !ok {
			return fmt.Errorf("pcrs: PCR %d missing (the firmware code and the Secure Boot policy are always pinned)", i)
		}
	}
	for i, v := range f.PCRs {
		if !slices.Contains(FirmwarePCRs, i) {
			return fmt.Errorf("pcrs[%d]: not a firmware PCR (want one of %v; PCR 4 is the image's)", i, FirmwarePCRs)
		}
		if len(v) != 32 {
			return fmt.Errorf("pcrs[%d]: %d bytes, want 32 (SHA-256 bank)", i, len(v))
		}
	}
	return nil
}

// LoadTPMFirmware reads a JSON list of firmware profiles.
func LoadTPMFirmware(path string) ([]TPMFirmware, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []TPMFirmware
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no firmware profile", path)
	}
	seen := map[string]bool{}
	for i := range out {
		if err := out[i].Validate(); err != nil {
			return nil, fmt.Errorf("%s: [%d]: %w", path, i, err)
		}
		k := out[i].Name + "/" + strconv.FormatBool(out[i].SecureBoot)
		if seen[k] {
			return nil, fmt.Errorf("%s: [%d]: %s with secure_boot %t repeated", path, i, out[i].Name, out[i].SecureBoot)
		}
		seen[k] = true
	}
	return out, nil
}

// FirmwareFromMeasurements makes a firmware profile from the measurements a
// reference boot's verified evidence shows (`verifier node --json`: "PCR0"
// … hex), keeping the PCRs in pcrs.
func FirmwareFromMeasurements(name string, secureBoot bool, m map[string]string, pcrs []int) (*TPMFirmware, error) {
	f := &TPMFirmware{Name: name, SecureBoot: secureBoot, PCRs: map[int]attest.HexBytes{}}
	for _, i := range pcrs {
		s, ok := m["PCR"+strconv.Itoa(i)]
		if !ok {
			return nil, fmt.Errorf("measurements: no PCR%d (the reference boot's evidence must quote it)", i)
		}
		v, err := hex.DecodeString(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("measurements: PCR%d: %v", i, err)
		}
		f.PCRs[i] = v
	}
	return f, f.Validate()
}

// TPMProfileOn names the reference of image on a recorded firmware.
func TPMProfileOn(firmware, image string, secureBoot bool) string {
	return strings.Replace(TPMProfile(image, secureBoot), "tpm-uefi-", "tpm-"+firmware+"-", 1)
}

// tpmReferences are the image's TPM references: one per Secure Boot state
// pinning PCR4/9/11, or, given firmware profiles, one per profile pinning
// its firmware PCRs too (and no unpinned one, which would accept any
// firmware).
func tpmReferences(ub []byte, image string, fws []TPMFirmware) ([]attest.Reference, error) {
	var out []attest.Reference
	predicted := map[bool]*measure.TPM{}
	for _, sb := range []bool{false, true} {
		v, err := measure.ComputeTPM(ub, sb)
		if err != nil {
			return nil, err
		}
		predicted[sb] = v
		if len(fws) == 0 {
			out = append(out, attest.Reference{Profile: TPMProfile(image, sb), Platform: attest.PlatformTPM,
				TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: v.PCR4, 9: v.PCR9, 11: v.PCR11}}})
		}
	}
	for _, f := range fws {
		if err := f.Validate(); err != nil {
			return nil, fmt.Errorf("tpm firmware %q: %w", f.Name, err)
		}
		v := predicted[f.SecureBoot]
		pcrs := map[int]attest.HexBytes{4: v.PCR4, 9: v.PCR9, 11: v.PCR11}
		for i, d := range f.PCRs {
			pcrs[i] = d
		}
		out = append(out, attest.Reference{Profile: TPMProfileOn(f.Name, image, f.SecureBoot), Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: pcrs}})
	}
	return out, nil
}
