// Package reference computes an image's confidential-VM reference values
// (SEV-SNP MEASUREMENT per VM shape, TDX MRTD and RTMR1–3) from the UKI and
// the pinned firmware: images build writes them into the manifest, the CVM
// emulator of the VM tier launches with them, and verifier image
// recomputes them to check a manifest independently of whoever built it.
package reference

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/cvm/firmware"
	"github.com/palisade-cc/palisade/internal/cvm/snp"
	"github.com/palisade-cc/palisade/internal/cvm/tdx"
	"github.com/palisade-cc/palisade/internal/measure"
)

// Shape is one confidential-VM shape: what the VMM sets that enters the
// launch measurement (one SEV-SNP VMSA per vCPU, its CPUID signature and
// SEV_FEATURES), so each shape is its own hardware profile.
type Shape struct {
	Name          string
	VCPUs         int
	VCPUType      string
	GuestFeatures uint64
}

// Shapes are the VM shapes every build computes references for. Guest
// features 0x1 is SNPActive only, what QEMU 8.x sets without debug-swap.
var Shapes = []Shape{
	{Name: "1cpu-epyc-v4", VCPUs: 1, VCPUType: "EPYC-v4", GuestFeatures: 1},
	{Name: "4cpu-epyc-v4", VCPUs: 4, VCPUType: "EPYC-v4", GuestFeatures: 1},
}

// ImageCC says which boot components of this image measure through
// EFI_CC_MEASUREMENT_PROTOCOL: neither systemd-stub 252 nor Linux 6.1 does
// (CC support came with systemd 255 and Linux 6.9), so RTMR2 stays zero and
// the cmdline and initrd are bound through the UKI's Authenticode hash in
// RTMR1 (docs/cvm-measure.md §TDX).
var ImageCC = tdx.CCMeasurers{}

// Firmware is the confidential-VM firmware a build computes launch values
// for. Either image may be nil; profiles name each by its digest.
type Firmware struct {
	SNP, TDX []byte
}

// LoadFirmware reads both pinned firmware files from dir (the directory
// scripts/firmware.sh prints last) and checks them against their pins.
func LoadFirmware(dir string) (*Firmware, error) {
	s, err := firmware.Load(dir, string(attest.PlatformSNP))
	if err != nil {
		return nil, err
	}
	t, err := firmware.Load(dir, string(attest.PlatformTDX))
	if err != nil {
		return nil, err
	}
	return &Firmware{SNP: s, TDX: t}, nil
}

// firmwareName names a firmware build in a profile: its kind and the first
// 8 hex digits of its SHA-256, so another firmware is another profile.
func firmwareName(kind string, b []byte) string {
	s := sha256.Sum256(b)
	return kind + "-" + hex.EncodeToString(s[:4])
}

// SNPProfile names the SEV-SNP profile of a firmware, shape and image.
func SNPProfile(fw []byte, shape, image string) string {
	return "sev-snp-" + firmwareName("ovmf", fw) + "-" + shape + "-" + image
}

// TDXProfile names the TDX profile of a firmware, shape, Secure Boot state
// and image.
func TDXProfile(fw []byte, shape string, secureBoot bool, image string) string {
	sb := "sb-off"
	if secureBoot {
		sb = "sb-on"
	}
	return "tdx-" + firmwareName("tdvf", fw) + "-" + shape + "-" + sb + "-" + image
}

// TDXBoot is what a reference boot of one VM shape recorded and the build
// cannot compute: RTMR0 (PCR 1 and 7: TD HOB, ACPI tables, boot variables,
// Secure Boot policy — they depend on the VMM's configuration), the TD's
// attributes and XFAM, and the TCB floor. The build fills in MRTD, RTMR1,
// RTMR2 and RTMR3; values given for those are refused.
type TDXBoot struct {
	Shape      string              `json:"shape"`
	SecureBoot bool                `json:"secure_boot"`
	Reference  attest.TDXReference `json:"reference"`
}

// LoadTDXBoots reads a JSON list of TDXBoot.
func LoadTDXBoots(path string) ([]TDXBoot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []TDXBoot
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// DirectBoot returns what a CVM launcher passes for measured direct boot,
// taken from the UKI's sections as loaded (VirtualSize bytes, what
// systemd-stub itself would hand over): .linux, .initrd and .cmdline. The
// launcher must use this function, so the digest covers exactly its bytes.
// The cmdline is returned without NUL: QEMU appends one when it hashes it.
func DirectBoot(ukiFile []byte) (*snp.Boot, error) {
	p, err := measure.ParsePE(ukiFile)
	if err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	get := func(name string) ([]byte, error) {
		s := p.Section(name)
		if s == nil {
			return nil, fmt.Errorf("uki: no %s section", name)
		}
		return p.Memory(s), nil
	}
	k, err := get(".linux")
	if err != nil {
		return nil, err
	}
	i, err := get(".initrd")
	if err != nil {
		return nil, err
	}
	c, err := get(".cmdline")
	if err != nil {
		return nil, err
	}
	// objcopy writes the file as is; a NUL-terminated .cmdline (ukify
	// adds none) is accepted, a NUL inside is not: QEMU would pass a
	// different string to the kernel than the one hashed.
	cs := strings.TrimRight(string(c), "\x00")
	if strings.IndexByte(cs, 0) >= 0 {
		return nil, fmt.Errorf("uki: .cmdline has a NUL inside")
	}
	return &snp.Boot{Kernel: k, Initrd: i, Cmdline: cs}, nil
}

// CVMOptions are the inputs of the confidential-VM references besides the
// UKI.
type CVMOptions struct {
	Image    string // image profile: production or debug
	Firmware Firmware
	Shapes   []Shape
	// SNP is the owner's SEV-SNP policy (product, TCB floor, SMT, …); the
	// build sets Measurement per shape.
	SNP attest.SNPReference
	// TDXBoots are the reference-boot values per shape; without one for a
	// shape no TDX profile is produced for it (Missing says why).
	TDXBoots []TDXBoot
}

// CVMReferences computes the SEV-SNP MEASUREMENT of each shape and, for each
// shape a reference boot recorded RTMR0 for, the TDX MRTD and RTMR1–3. It
// returns the references and, per TDX shape left out, what was missing.
func CVMReferences(ukiFile []byte, o CVMOptions) (refs []attest.Reference, missing []string, err error) {
	boot, err := DirectBoot(ukiFile)
	if err != nil {
		return nil, nil, err
	}
	if o.Firmware.SNP != nil {
		if o.SNP.Product == "" {
			return nil, nil, fmt.Errorf("sev-snp: product empty (Milan, Genoa, Turin)")
		}
		if len(o.SNP.Measurement) != 0 {
			return nil, nil, fmt.Errorf("sev-snp: measurement is computed, not given")
		}
		for _, sh := range o.Shapes {
			m, err := snp.Compute(snp.Input{Firmware: o.Firmware.SNP, Boot: boot, VCPUs: sh.VCPUs,
				VCPUType: sh.VCPUType, GuestFeatures: sh.GuestFeatures})
			if err != nil {
				return nil, nil, fmt.Errorf("sev-snp shape %s: %w", sh.Name, err)
			}
			r := o.SNP
			r.Measurement = m
			refs = append(refs, attest.Reference{Profile: SNPProfile(o.Firmware.SNP, sh.Name, o.Image),
				Platform: attest.PlatformSNP, SNP: &r})
		}
	}
	if o.Firmware.TDX == nil {
		return refs, nil, nil
	}
	byShape := map[string][]TDXBoot{}
	for _, b := range o.TDXBoots {
		byShape[b.Shape] = append(byShape[b.Shape], b)
	}
	mrtd, err := tdx.MRTD(o.Firmware.TDX)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: %w", err)
	}
	p, err := measure.ParsePE(ukiFile)
	if err != nil {
		return nil, nil, fmt.Errorf("uki: %w", err)
	}
	rtmr2 := tdx.Replay(tdx.RTMR2Events(p, measure.InspectKernel(boot.Kernel), ImageCC)...)
	for _, sh := range o.Shapes {
		boots := byShape[sh.Name]
		delete(byShape, sh.Name)
		if len(boots) == 0 {
			missing = append(missing, fmt.Sprintf("tdx shape %s: no reference boot recorded (rtmr[0], td_attributes, xfam, min_tee_tcb_svn)", sh.Name))
			continue
		}
		for _, b := range boots {
			ev, err := tdx.RTMR1Events(ukiFile, b.SecureBoot)
			if err != nil {
				return nil, nil, fmt.Errorf("tdx shape %s: %w", sh.Name, err)
			}
			r := b.Reference
			if len(r.MRTD) != 0 || len(r.RTMR[1]) != 0 || len(r.RTMR[2]) != 0 || len(r.RTMR[3]) != 0 {
				return nil, nil, fmt.Errorf("tdx shape %s: mrtd and rtmr[1-3] are computed, not given", sh.Name)
			}
			r.MRTD = mrtd
			r.RTMR[1] = tdx.Replay(ev...)
			r.RTMR[2] = rtmr2
			// RTMR3 (MR index 4) has no PCR mapped to it (TdTcg2Dxe
			// MapPcrToMrIndex) and nothing in this image extends it.
			r.RTMR[3] = make([]byte, tdx.Size)
			ref := attest.Reference{Profile: TDXProfile(o.Firmware.TDX, sh.Name, b.SecureBoot, o.Image),
				Platform: attest.PlatformTDX, TDX: &r}
			if err := ref.Validate(); err != nil {
				return nil, nil, fmt.Errorf("tdx shape %s (recorded values): %w", sh.Name, err)
			}
			refs = append(refs, ref)
		}
	}
	for s := range byShape {
		return nil, nil, fmt.Errorf("tdx: reference boot for unknown shape %q", s)
	}
	for i := range refs {
		if err := refs[i].Validate(); err != nil {
			return nil, nil, err
		}
	}
	return refs, missing, nil
}

// CheckDirectBoot checks that what a CVM launcher takes out of the UKI is
// what the build put in, so the launch digest covers the built files.
func CheckDirectBoot(ukiFile []byte, files map[string][]byte) error {
	b, err := DirectBoot(ukiFile)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		name      string
		got, want []byte
	}{{"vmlinuz", b.Kernel, files["vmlinuz"]}, {"initrd.img", b.Initrd, files["initrd.img"]},
		{"cmdline", []byte(b.Cmdline), files["cmdline"]}} {
		if !bytes.Equal(c.got, c.want) {
			return fmt.Errorf("uki: direct-boot %s (%d bytes) differs from the built file (%d bytes)", c.name, len(c.got), len(c.want))
		}
	}
	return nil
}
