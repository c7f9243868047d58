// Package tdx computes an Intel TDX trust domain's MRTD from its TDVF image,
// and the RTMR values TDVF and the boot chain extend for a UKI.
//
// It is the host's arithmetic only: it neither launches a TD nor verifies a
// quote (internal/attest/tdx does).
package tdx

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"

	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
	"github.com/palisade-cc/palisade/internal/measure"
)

// Size is the size of MRTD and of each RTMR (SHA-384).
const Size = sha512.Size384

// Order is the order in which a VMM issues TDH.MEM.PAGE.ADD and
// TDH.MR.EXTEND; MRTD depends on it, the TDX module does not fix it.
type Order int

const (
	// PerPage is KVM's order (arch/x86/kvm/vmx/tdx.c, tdx_gmem_post_populate,
	// driven by QEMU's KVM_TDX_INIT_MEM_REGION per section): for each page
	// PAGE.ADD, then, for a section with EXTENDMR, the page's 16 MR.EXTENDs.
	PerPage Order = iota
	// PerSection adds every page of a section, then extends the section's
	// chunks (td-shim's tee-info-hash tool).
	PerSection
)

// extendChunk is TDH.MR.EXTEND's granule (TDX module ABI, TDH.MR.EXTEND).
const extendChunk = 256

// MRTD computes MRTD for QEMU/KVM (PerPage).
func MRTD(firmware []byte) ([]byte, error) { return MRTDOrder(firmware, PerPage) }

// MRTDOrder computes MRTD as the TDX module does (Intel TDX Module Base
// Architecture Specification, "MRTD"; TDVF Design Guide §11.3, §4.2): a
// SHA-384 over a 128-byte record per TDH.MEM.PAGE.ADD ("MEM.PAGE.ADD" ‖ GPA,
// zero-padded) and, per 256-byte chunk of an EXTENDMR section,
// a 128-byte record "MR.EXTEND" ‖ GPA followed by the chunk.
func MRTDOrder(firmware []byte, order Order) ([]byte, error) {
	img, err := ovmf.Parse(firmware)
	if err != nil {
		return nil, fmt.Errorf("tdx: %w", err)
	}
	sections, err := img.TDXMetadata()
	if err != nil {
		return nil, fmt.Errorf("tdx: %w", err)
	}
	h := sha512.New384()
	data := img.Data()
	for _, s := range sections {
		if s.Attributes&ovmf.TDXPageAug != 0 {
			// Accepted by the guest later (TDH.MEM.PAGE.AUG), not measured.
			continue
		}
		// A measured section is all data (ovmf checks RawDataSize ==
		// MemoryDataSize for EXTENDMR).
		mem := func(off uint64) []byte {
			return data[uint64(s.DataOffset)+off : uint64(s.DataOffset)+off+ovmf.PageSize]
		}
		extend := s.Attributes&ovmf.TDXExtendMR != 0
		switch order {
		case PerPage:
			for off := uint64(0); off < s.MemoryDataSize; off += ovmf.PageSize {
				pageAdd(h, s.MemoryAddress+off)
				if extend {
					mrExtend(h, s.MemoryAddress+off, mem(off))
				}
			}
		case PerSection:
			for off := uint64(0); off < s.MemoryDataSize; off += ovmf.PageSize {
				pageAdd(h, s.MemoryAddress+off)
			}
			if extend {
				for off := uint64(0); off < s.MemoryDataSize; off += ovmf.PageSize {
					mrExtend(h, s.MemoryAddress+off, mem(off))
				}
			}
		default:
			return nil, fmt.Errorf("tdx: unknown order %d", order)
		}
	}
	return h.Sum(nil), nil
}

func pageAdd(h hash.Hash, gpa uint64) {
	var rec [128]byte
	copy(rec[:], "MEM.PAGE.ADD")
	binary.LittleEndian.PutUint64(rec[16:], gpa)
	h.Write(rec[:])
}

func mrExtend(h hash.Hash, gpa uint64, page []byte) {
	for c := 0; c < len(page); c += extendChunk {
		var rec [128]byte
		copy(rec[:], "MR.EXTEND")
		binary.LittleEndian.PutUint64(rec[16:], gpa+uint64(c))
		h.Write(rec[:])
		h.Write(page[c : c+extendChunk])
	}
}

// Extend is TDG.MR.RTMR.EXTEND: SHA-384(rtmr ‖ digest).
func Extend(rtmr, digest []byte) []byte {
	h := sha512.New384()
	h.Write(rtmr)
	h.Write(digest)
	return h.Sum(nil)
}

// Replay extends a zero RTMR with each digest in order.
func Replay(digests ...[]byte) []byte {
	r := make([]byte, Size)
	for _, d := range digests {
		r = Extend(r, d)
	}
	return r
}

func sum384(b []byte) []byte {
	s := sha512.Sum384(b)
	return s[:]
}

// Event strings (TCG PC Client PFP §10.4.4; OvmfPkg/IntelTdx/TdTcg2Dxe).
const (
	callingEFIApplication = "Calling EFI Application from Boot Option"
	exitBootServices      = "Exit Boot Services Invocation"
	exitBootServicesOK    = "Exit Boot Services Returned with Success"
)

// RTMR1Events are the digests TDVF extends into RTMR1 (PCR 2–6 mapped,
// UEFI spec "EFI_CC_MEASUREMENT_PROTOCOL", TdTcg2Dxe MapPcrToMrIndex) when
// it boots the UKI as its first boot option: the ReadyToBoot action and one
// separator (TdTcg2Dxe OnReadyToBoot: RTMR0's separator comes with the
// Secure Boot policy), the UKI's Authenticode SHA-384
// (EV_EFI_BOOT_SERVICES_APPLICATION), with Secure Boot off the inner
// kernel's (systemd-stub 252 LoadImage, as images/measure.PCR4Events
// explains), then the two ExitBootServices actions (PCR5).
func RTMR1Events(ukiFile []byte, secureBoot bool) ([][]byte, error) {
	uki, err := measure.ParsePE(ukiFile)
	if err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	a, err := authenticode384(ukiFile, uki)
	if err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	ev := [][]byte{sum384([]byte(callingEFIApplication)), sum384(make([]byte, 4)), a}
	if !secureBoot {
		s := uki.Section(".linux")
		if s == nil {
			return nil, fmt.Errorf("uki: no .linux section")
		}
		kb := uki.Memory(s)
		k, err := measure.ParsePE(kb)
		if err != nil {
			return nil, fmt.Errorf("uki .linux: %w", err)
		}
		ka, err := authenticode384(kb, k)
		if err != nil {
			return nil, fmt.Errorf("uki .linux: %w", err)
		}
		ev = append(ev, ka)
	}
	return append(ev, sum384([]byte(exitBootServices)), sum384([]byte(exitBootServicesOK))), nil
}

// CCMeasurers says which boot components measure through
// EFI_CC_MEASUREMENT_PROTOCOL. With no TPM in a TD, a component that only
// knows EFI_TCG2_PROTOCOL measures nothing: systemd-stub 252 and Linux 6.1
// are such (CC support came with systemd 255 and Linux 6.9 respectively).
type CCMeasurers struct {
	Stub   bool // systemd-stub's PCR11 section events
	Kernel bool // the Linux EFI stub's PCR9 LoadOptions and initrd events
}

// RTMR2Events are the digests extended into RTMR2 (PCR 8–15): systemd-stub's
// section measurements, then the kernel's LoadOptions and initrd events, in
// SHA-384 and for those components that measure through the CC protocol.
func RTMR2Events(uki *measure.PE, k measure.KernelPCR9, cc CCMeasurers) [][]byte {
	var ev [][]byte
	if cc.Stub {
		for _, name := range measure.UKISections {
			s := uki.Section(name)
			if s == nil {
				continue
			}
			ev = append(ev, sum384(append([]byte(name), 0)), sum384(uki.Memory(s)))
		}
	}
	if cc.Kernel {
		if k.LoadOptions {
			if s := uki.Section(".cmdline"); s != nil {
				ev = append(ev, sum384(measure.LoadOptions(trimNUL(uki.Memory(s)))))
			}
		}
		if k.Initrd {
			if s := uki.Section(".initrd"); s != nil {
				ev = append(ev, sum384(uki.Memory(s)))
			}
		}
	}
	return ev
}

func trimNUL(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// authenticode384 is Authenticode with SHA-384, the hash TDVF uses. It
// hashes the same ranges as measure.(*PE).Authenticode, which computes
// SHA-256 only.
func authenticode384(b []byte, p *measure.PE) ([]byte, error) {
	return authenticode(sha512.New384(), b, p)
}

func authenticode(h hash.Hash, b []byte, p *measure.PE) ([]byte, error) {
	cs := p.ChecksumOffset()
	// The optional header starts 64 bytes before CheckSum; its magic says
	// where the data directories begin (PE/COFF §3.4.1/§3.4.3).
	opt := cs - 64
	if opt < 0 || opt+2 > len(b) {
		return nil, fmt.Errorf("authenticode: optional header at %d out of range", opt)
	}
	var dirs int
	switch binary.LittleEndian.Uint16(b[opt:]) {
	case 0x10b:
		dirs = opt + 96
	case 0x20b:
		dirs = opt + 112
	default:
		return nil, fmt.Errorf("authenticode: optional header magic %#x", binary.LittleEndian.Uint16(b[opt:]))
	}
	h.Write(b[:cs])
	n := binary.LittleEndian.Uint32(b[dirs-4:]) // NumberOfRvaAndSizes
	certDir := dirs + 4*8
	if n > 4 && certDir+8 > int(p.SizeOfHeaders) {
		return nil, fmt.Errorf("authenticode: certificate directory at %d past the headers (%d bytes)", certDir, p.SizeOfHeaders)
	}
	if n <= 4 {
		h.Write(b[cs+4 : p.SizeOfHeaders])
	} else {
		h.Write(b[cs+4 : certDir])
		h.Write(b[certDir+8 : p.SizeOfHeaders])
	}
	secs := append([]measure.Section(nil), p.Sections...)
	sortByRaw(secs)
	sum := uint64(p.SizeOfHeaders)
	for _, s := range secs {
		if s.SizeOfRawData == 0 {
			continue
		}
		h.Write(b[s.PointerToRawData : s.PointerToRawData+s.SizeOfRawData])
		sum += uint64(s.SizeOfRawData)
	}
	if end := uint64(len(b)) - uint64(p.CertSize); end > sum {
		h.Write(b[sum:end])
	}
	return h.Sum(nil), nil
}

func sortByRaw(s []measure.Section) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].PointerToRawData < s[j-1].PointerToRawData; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
