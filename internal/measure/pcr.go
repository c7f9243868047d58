package measure

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unicode/utf16"
)

// Extend returns SHA-256(pcr || digest), the TPM2_PCR_Extend of one bank.
func Extend(pcr, digest []byte) []byte {
	h := sha256.New()
	h.Write(pcr)
	h.Write(digest)
	return h.Sum(nil)
}

// Replay extends a zero PCR with each digest in order.
func Replay(digests ...[]byte) []byte {
	pcr := make([]byte, sha256.Size)
	for _, d := range digests {
		pcr = Extend(pcr, d)
	}
	return pcr
}

func sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// UKISections are the sections systemd-stub 252 measures into PCR11, in the
// order it measures them: the order of its unified_sections[] enum
// (src/fundamental/tpm-pcr.h), skipping .pcrsig, which cannot sign itself.
// Absent sections are skipped.
var UKISections = []string{".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"}

// PCR11Events returns systemd-stub's PCR11 digests for a UKI: for each
// present section, the section name with its NUL, then the section's
// in-memory content (src/boot/efi/stub.c, "First measure the name of the
// section", then its data).
func PCR11Events(uki *PE) [][]byte {
	var ev [][]byte
	for _, name := range UKISections {
		s := uki.Section(name)
		if s == nil || s.VirtualSize == 0 {
			continue
		}
		ev = append(ev, sum(append([]byte(name), 0)), sum(uki.Memory(s)))
	}
	return ev
}

// PCR11 is the value of PCR11 after systemd-stub ran, when nothing else
// extends it (no systemd in the initramfs measuring boot phases).
func PCR11(uki *PE) []byte { return Replay(PCR11Events(uki)...) }

// The kernel EFI stub's tagged-event markers (drivers/firmware/efi/libstub/
// efi-stub-helper.c, efi_measure_tagged_event). The kernel image itself says
// whether it measures: these strings are in its stub.
var (
	tagLoadOptions = []byte("LOADED_IMAGE::LoadOptions")
	tagInitrd      = []byte("Linux initrd")
)

// KernelPCR9 says what a kernel's EFI stub measures into PCR9, read from
// the kernel image: the LoadOptions event (Linux 6.1+) and the initrd event
// (Linux 5.19+).
type KernelPCR9 struct {
	LoadOptions bool
	Initrd      bool
}

// InspectKernel finds the tagged-event markers in a kernel image.
func InspectKernel(kernel []byte) KernelPCR9 {
	return KernelPCR9{LoadOptions: bytes.Contains(kernel, tagLoadOptions), Initrd: bytes.Contains(kernel, tagInitrd)}
}

// LoadOptions is what systemd-stub hands the kernel as LoadOptions: the
// .cmdline section converted to UTF-16LE with a terminating NUL
// (src/boot/efi/linux.c sets LoadOptionsSize to the string's size incl. NUL).
func LoadOptions(cmdline string) []byte {
	u := utf16.Encode([]rune(cmdline))
	b := make([]byte, 0, 2*len(u)+2)
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, 0, 0)
}

// PCR9Events returns the kernel's PCR9 digests: the LoadOptions (cmdline)
// first, then the initrd, as efi_pe_entry → efi_stub_common handles the
// command line before efi_load_initrd.
func PCR9Events(k KernelPCR9, cmdline string, initrd []byte) [][]byte {
	var ev [][]byte
	if k.LoadOptions {
		ev = append(ev, sum(LoadOptions(cmdline)))
	}
	if k.Initrd && len(initrd) > 0 {
		ev = append(ev, sum(initrd))
	}
	return ev
}

// Firmware events OVMF measures into PCR4 before the first boot option
// (EDK2 Tcg2Dxe OnReadyToBoot; TCG PC Client PFP §10.4.4): an EV_EFI_ACTION
// and the EV_SEPARATOR.
var (
	callingAction = []byte("Calling EFI Application from Boot Option")
	separator     = []byte{0, 0, 0, 0}
)

// PCR4Events returns PCR4's digests for a PXE or HTTP boot of the UKI as the
// first boot option: the ReadyToBoot action, the separator, the UKI's
// Authenticode hash (EV_EFI_BOOT_SERVICES_APPLICATION), and — with Secure
// Boot off only — the inner kernel's. systemd-stub 252 starts a kernel with
// a PE version ≥ 1 through LoadImage (src/boot/efi/linux.c); with Secure
// Boot on it installs a security override for that buffer, which bypasses
// the firmware's measuring FileAuthentication handler, so the kernel is not
// measured.
func PCR4Events(uki *PE, secureBoot bool) ([][]byte, error) {
	ev := [][]byte{sum(callingAction), sum(separator), uki.Authenticode()}
	if secureBoot {
		return ev, nil
	}
	s := uki.Section(".linux")
	if s == nil || s.VirtualSize == 0 {
		return nil, fmt.Errorf("uki: no .linux section")
	}
	k, err := ParsePE(uki.Memory(s))
	if err != nil {
		return nil, fmt.Errorf("uki .linux: %w", err)
	}
	return append(ev, k.Authenticode()), nil
}

// TPM are the computed PCRs of one hardware profile.
type TPM struct {
	PCR4, PCR9, PCR11 []byte
}

// ComputeTPM computes PCR4, PCR9 and PCR11 for a built UKI.
func ComputeTPM(ukiFile []byte, secureBoot bool) (*TPM, error) {
	uki, err := ParsePE(ukiFile)
	if err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	if err := uki.CheckLayout(); err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	p4, err := PCR4Events(uki, secureBoot)
	if err != nil {
		return nil, err
	}
	var linux, cmdline, initrd []byte
	for name, dst := range map[string]*[]byte{".linux": &linux, ".cmdline": &cmdline, ".initrd": &initrd} {
		s := uki.Section(name)
		if s == nil {
			return nil, fmt.Errorf("uki: no %s section", name)
		}
		*dst = uki.Memory(s)
	}
	return &TPM{
		PCR4:  Replay(p4...),
		PCR9:  Replay(PCR9Events(InspectKernel(linux), string(cmdline), initrd)...),
		PCR11: PCR11(uki),
	}, nil
}
