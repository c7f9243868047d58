// Package snp computes the SEV-SNP launch MEASUREMENT of a guest started by
// QEMU from an OVMF AmdSev build, with or without measured direct boot.
//
// It is the host's arithmetic only: it neither launches nor attests a guest
// (internal/attest/snp verifies reports).
package snp

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
)

// DigestSize is the size of the launch digest (SHA-384).
const DigestSize = sha512.Size384

// Page types of PAGE_INFO (SEV-SNP Firmware ABI §8.17, Table 67).
const (
	PageNormal     = 0x01
	PageVMSA       = 0x02
	PageZero       = 0x03
	PageUnmeasured = 0x04
	PageSecrets    = 0x05
	PageCPUID      = 0x06
)

// vmsaGPA is the GPA KVM reports for every VMSA page it measures
// (arch/x86/kvm/svm/sev.c, snp_launch_update_vmsa: the GPA is not the
// page's, the ABI lets the hypervisor choose it).
const vmsaGPA = 0xFFFFFFFFF000

// MaxVCPUs bounds the vCPU count (SEV-SNP guests have at most 255 with
// xAPIC IDs; QEMU's limit is higher but one VMSA is measured per vCPU).
const MaxVCPUs = 512

// MaxSectionPages bounds the pages the SEV metadata may declare (64 MiB;
// AmdSev 2022.11 declares 0x1f pages), so a hostile image cannot make the
// computation hash gigabytes of zero pages.
const MaxSectionPages = 16384

// Boot is what QEMU hands the firmware for measured direct boot.
type Boot struct {
	Kernel, Initrd []byte
	// Cmdline is the kernel command line without its NUL; QEMU hashes it
	// with the NUL (target/i386/sev.c, sev_add_kernel_loader_hashes).
	Cmdline string
}

// Input is one VM shape with its firmware.
type Input struct {
	Firmware []byte
	// Boot is nil for a firmware-only launch (no kernel hashes table).
	Boot *Boot
	// VCPUs is the vCPU count: one VMSA page each.
	VCPUs int
	// VCPUType is QEMU's -cpu model ("EPYC-v4", "EPYC-Milan", …); its
	// family/model/stepping go into each VMSA's RDX.
	VCPUType string
	// GuestFeatures is the VMSA SEV_FEATURES QEMU sets (bit 0 SNPActive
	// always; 0x1 for QEMU 8.x without debug-swap).
	GuestFeatures uint64
}

// Digest is a SEV-SNP launch-digest chain.
type Digest struct {
	ld [DigestSize]byte
	// Pages counts the PAGE_INFO updates, for reports and tests.
	Pages int
}

// update chains one PAGE_INFO (Table 67): DIGEST_CUR ‖ CONTENTS ‖ LENGTH
// (u16, 0x70) ‖ PAGE_TYPE ‖ IMI_PAGE ‖ VMPL3/2/1_PERMS ‖ reserved ‖ GPA (u64).
func (d *Digest) update(pageType byte, gpa uint64, contents *[DigestSize]byte) {
	var pi [0x70]byte
	copy(pi[0:48], d.ld[:])
	copy(pi[48:96], contents[:])
	binary.LittleEndian.PutUint16(pi[96:], 0x70)
	pi[98] = pageType
	// IMI_PAGE, VMPL permissions and reserved stay zero: a launch by the
	// hypervisor, not a migration agent, and no VMPL permissions granted.
	binary.LittleEndian.PutUint64(pi[104:], gpa)
	d.ld = sha512.Sum384(pi[:])
	d.Pages++
}

var zeroContents [DigestSize]byte

func (d *Digest) normal(gpa uint64, page []byte) {
	h := sha512.Sum384(page)
	d.update(PageNormal, gpa, &h)
}

// Sum is the current launch digest.
func (d *Digest) Sum() []byte { return append([]byte(nil), d.ld[:]...) }

// CPUSignature is CPUID Fn0000_0001_EAX for family, model, stepping (AMD
// CPUID specification: extended family above 0xf, extended model bits).
func CPUSignature(family, model, stepping int) uint32 {
	fam, extFam := family, 0
	if family > 0xf {
		fam, extFam = 0xf, family-0xf
	}
	return uint32(extFam&0xff)<<20 | uint32(model>>4&0xf)<<16 | uint32(fam)<<8 | uint32(model&0xf)<<4 | uint32(stepping&0xf)
}

// vcpuTypes are QEMU's EPYC models (target/i386/cpu.c, builtin_x86_defs).
var vcpuTypes = map[string][3]int{
	"EPYC": {23, 1, 2}, "EPYC-v1": {23, 1, 2}, "EPYC-v2": {23, 1, 2}, "EPYC-IBPB": {23, 1, 2}, "EPYC-v3": {23, 1, 2}, "EPYC-v4": {23, 1, 2},
	"EPYC-Rome": {23, 49, 0}, "EPYC-Rome-v1": {23, 49, 0}, "EPYC-Rome-v2": {23, 49, 0}, "EPYC-Rome-v3": {23, 49, 0}, "EPYC-Rome-v4": {23, 49, 0},
	"EPYC-Milan": {25, 1, 1}, "EPYC-Milan-v1": {25, 1, 1}, "EPYC-Milan-v2": {25, 1, 1},
	"EPYC-Genoa": {25, 17, 0}, "EPYC-Genoa-v1": {25, 17, 0},
}

// VCPUSignature returns the CPUID signature of a QEMU vCPU model.
func VCPUSignature(name string) (uint32, error) {
	fms, ok := vcpuTypes[name]
	if !ok {
		names := make([]string, 0, len(vcpuTypes))
		for n := range vcpuTypes {
			names = append(names, n)
		}
		sort.Strings(names)
		return 0, fmt.Errorf("vcpu type %q unknown; want one of %s", name, strings.Join(names, ", "))
	}
	return CPUSignature(fms[0], fms[1], fms[2]), nil
}

// The SEV hashes table (OvmfPkg/AmdSev/BlobVerifierLibSevHashes/
// BlobVerifierSevHashes.c; QEMU target/i386/sev.c SevHashTable): a GUIDed
// header with the table's length, then cmdline, initrd, kernel entries
// {GUID, u16 length (50), SHA-256}, padded to 16 bytes.
var (
	hashTableGUID = mustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	cmdlineGUID   = mustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
	initrdGUID    = mustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	kernelGUID    = mustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
)

func mustGUID(s string) ovmf.GUID {
	g, err := ovmf.ParseGUID(s)
	if err != nil {
		panic(err) // constants only
	}
	return g
}

const (
	hashEntrySize = 16 + 2 + sha256.Size
	hashTableSize = 16 + 2 + 3*hashEntrySize // 168
	// PaddedHashTableSize is the table rounded up to 16 bytes, what QEMU
	// copies into the page.
	PaddedHashTableSize = (hashTableSize + 15) &^ 15
)

// HashTable builds the padded SEV hashes table of b.
func HashTable(b *Boot) []byte {
	t := make([]byte, 0, PaddedHashTableSize)
	t = append(t, hashTableGUID[:]...)
	t = binary.LittleEndian.AppendUint16(t, hashTableSize)
	entry := func(g ovmf.GUID, data []byte) {
		h := sha256.Sum256(data)
		t = append(t, g[:]...)
		t = binary.LittleEndian.AppendUint16(t, hashEntrySize)
		t = append(t, h[:]...)
	}
	entry(cmdlineGUID, append([]byte(b.Cmdline), 0))
	entry(initrdGUID, b.Initrd)
	entry(kernelGUID, b.Kernel)
	return t[:PaddedHashTableSize]
}

// Compute returns the launch digest of in, in QEMU's order (target/i386/
// sev.c, sev_snp_launch_finish): the firmware image as normal pages at
// 4 GiB − size, then each SEV metadata section in table order, then one
// VMSA per vCPU (BSP first).
func Compute(in Input) ([]byte, error) {
	d, err := Chain(in)
	if err != nil {
		return nil, err
	}
	return d.Sum(), nil
}

// Chain is Compute, returning the digest state with its page count.
func Chain(in Input) (*Digest, error) {
	if in.VCPUs < 1 || in.VCPUs > MaxVCPUs {
		return nil, fmt.Errorf("snp: %d vCPUs, want 1..%d", in.VCPUs, MaxVCPUs)
	}
	sig, err := VCPUSignature(in.VCPUType)
	if err != nil {
		return nil, fmt.Errorf("snp: %w", err)
	}
	if in.GuestFeatures&1 == 0 {
		return nil, fmt.Errorf("snp: guest features %#x lack SNPActive (bit 0)", in.GuestFeatures)
	}
	img, err := ovmf.Parse(in.Firmware)
	if err != nil {
		return nil, fmt.Errorf("snp: %w", err)
	}
	sections, err := img.SEVMetadata()
	if err != nil {
		return nil, fmt.Errorf("snp: %w", err)
	}
	apEIP, err := img.SEVESResetEIP()
	if err != nil {
		return nil, fmt.Errorf("snp: %w", err)
	}

	// The kernel-hashes page: in a section of its own (type 0x10, newer
	// edk2), or — as in edk2 2022.11's AmdSev build — a page inside a
	// SNP_SEC_MEM range, which is then measured as normal page with the
	// table instead of a zero page.
	var hashPage []byte
	var hashGPA uint64
	if in.Boot != nil {
		base, size, err := img.SEVHashTable()
		if err != nil {
			return nil, fmt.Errorf("snp: measured direct boot: %w", err)
		}
		if size < PaddedHashTableSize {
			return nil, fmt.Errorf("snp: sev hashes table: %d bytes reserved, the table needs %d", size, PaddedHashTableSize)
		}
		hashGPA = uint64(base) &^ (ovmf.PageSize - 1)
		hashPage = make([]byte, ovmf.PageSize)
		copy(hashPage[base%ovmf.PageSize:], HashTable(in.Boot))
		if err := hashPageCovered(sections, hashGPA); err != nil {
			return nil, fmt.Errorf("snp: %w", err)
		}
	}

	pages := 0
	for _, s := range sections {
		pages += int(s.Size / ovmf.PageSize)
	}
	if pages > MaxSectionPages {
		return nil, fmt.Errorf("snp: sev metadata sections span %d pages, more than the %d an SNP firmware declares (not an AmdSev build?)", pages, MaxSectionPages)
	}

	var d Digest
	gpa := img.GPA()
	data := img.Data()
	for off := 0; off < len(data); off += ovmf.PageSize {
		d.normal(gpa+uint64(off), data[off:off+ovmf.PageSize])
	}
	for _, s := range sections {
		for a := uint64(s.Base); a < uint64(s.Base)+uint64(s.Size); a += ovmf.PageSize {
			switch {
			case hashPage != nil && a == hashGPA:
				d.normal(a, hashPage)
			case s.Type == ovmf.SEVSecMem || s.Type == ovmf.SEVSVSMCAA || s.Type == ovmf.SEVKernelHashes:
				// QEMU adds prevalidated memory, and a kernel-hashes
				// section without a kernel, as zero pages.
				d.update(PageZero, a, &zeroContents)
			case s.Type == ovmf.SEVSecrets:
				d.update(PageSecrets, a, &zeroContents)
			case s.Type == ovmf.SEVCPUID:
				d.update(PageCPUID, a, &zeroContents)
			}
		}
	}
	bsp := VMSA(0xfffffff0, in.GuestFeatures, sig)
	bspHash := sha512.Sum384(bsp)
	ap := VMSA(apEIP, in.GuestFeatures, sig)
	apHash := sha512.Sum384(ap)
	for i := 0; i < in.VCPUs; i++ {
		if i == 0 {
			d.update(PageVMSA, vmsaGPA, &bspHash)
		} else {
			d.update(PageVMSA, vmsaGPA, &apHash)
		}
	}
	return &d, nil
}

// hashPageCovered checks the kernel-hashes page lies in exactly one section
// that the launcher adds page by page (SNP_SEC_MEM or KERNEL_HASHES): a page
// outside every section would not be measured at all, and a page in a
// secrets or CPUID page cannot hold it.
func hashPageCovered(sections []ovmf.SEVSection, gpa uint64) error {
	n := 0
	for _, s := range sections {
		if gpa >= uint64(s.Base) && gpa < uint64(s.Base)+uint64(s.Size) {
			if s.Type != ovmf.SEVSecMem && s.Type != ovmf.SEVKernelHashes {
				return fmt.Errorf("sev hashes table page %#x lies in a section of type %#x", gpa, s.Type)
			}
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("sev hashes table page %#x lies in %d sev metadata sections, want 1", gpa, n)
	}
	return nil
}

// VMSA builds the initial VMSA page QEMU/KVM measure for a vCPU starting at
// eip (AMD64 APM Vol. 2, Table B-4, VMSA layout; QEMU 7.2/8.x reset state,
// x86_cpu_reset and KVM's sev_es_sync_vmsa): real mode, CS base from eip's
// upper half, RIP its lower half, RDX the CPUID signature.
func VMSA(eip uint32, features uint64, sig uint32) []byte {
	p := make([]byte, ovmf.PageSize)
	seg := func(off int, sel, attrib uint16, limit uint32, base uint64) {
		binary.LittleEndian.PutUint16(p[off:], sel)
		binary.LittleEndian.PutUint16(p[off+2:], attrib)
		binary.LittleEndian.PutUint32(p[off+4:], limit)
		binary.LittleEndian.PutUint64(p[off+8:], base)
	}
	seg(0x00, 0, 0x93, 0xffff, 0)                           // ES
	seg(0x10, 0xf000, 0x9b, 0xffff, uint64(eip&0xffff0000)) // CS
	seg(0x20, 0, 0x93, 0xffff, 0)                           // SS
	seg(0x30, 0, 0x93, 0xffff, 0)                           // DS
	seg(0x40, 0, 0x93, 0xffff, 0)                           // FS
	seg(0x50, 0, 0x93, 0xffff, 0)                           // GS
	seg(0x60, 0, 0, 0xffff, 0)                              // GDTR
	seg(0x70, 0, 0x82, 0xffff, 0)                           // LDTR
	seg(0x80, 0, 0, 0xffff, 0)                              // IDTR
	seg(0x90, 0, 0x8b, 0xffff, 0)                           // TR
	u64 := func(off int, v uint64) { binary.LittleEndian.PutUint64(p[off:], v) }
	u64(0xd0, 0x1000)                                // EFER.SVME, set by KVM
	u64(0x148, 0x40)                                 // CR4.MCE
	u64(0x158, 0x10)                                 // CR0.ET
	u64(0x160, 0x400)                                // DR7
	u64(0x168, 0xffff0ff0)                           // DR6
	u64(0x170, 0x2)                                  // RFLAGS
	u64(0x178, uint64(eip&0xffff))                   // RIP
	u64(0x268, 0x0007040600070406)                   // G_PAT, APM Vol. 2 §A.3 reset value
	u64(0x310, uint64(sig))                          // RDX: CPUID signature at reset
	u64(0x3b0, features)                             // SEV_FEATURES
	u64(0x3e8, 0x1)                                  // XCR0
	binary.LittleEndian.PutUint32(p[0x408:], 0x1f80) // MXCSR
	binary.LittleEndian.PutUint16(p[0x410:], 0x37f)  // x87 FCW
	return p
}
