// Package measure computes TPM reference values from the files the image
// build produced: Authenticode hashes (PCR4), systemd-stub's section
// measurements (PCR11) and the kernel's cmdline and initrd events (PCR9).
//
// It is pure: no I/O, no TPM. PCR0–7 depend on the firmware and are recorded
// from a reference boot, not computed here.
package measure

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PE is the part of a PE/COFF image (Microsoft PE/COFF specification) that
// Authenticode and systemd-stub look at.
type PE struct {
	raw []byte
	// checksumOff is the file offset of OptionalHeader.CheckSum.
	checksumOff int
	// certDirOff is the file offset of the Certificate Table data
	// directory entry (index 4), or -1 when NumberOfRvaAndSizes <= 4.
	certDirOff int
	// CertOff and CertSize locate the attribute certificate table (a
	// file offset, PE/COFF §4.7), zero when unsigned.
	CertOff, CertSize uint32
	SizeOfHeaders     uint32
	SizeOfImage       uint32
	SectionAlignment  uint32
	FileAlignment     uint32
	Sections          []Section
}

// Section is one section header.
type Section struct {
	Name             string
	VirtualSize      uint32
	VirtualAddress   uint32
	SizeOfRawData    uint32
	PointerToRawData uint32
}

// MaxImageSize bounds SizeOfImage and so every section's in-memory size;
// a UKI is tens of MiB.
const MaxImageSize = 512 << 20

// MaxSections bounds the section count (the format allows 96 for images).
const MaxSections = 96

var errTrunc = errors.New("truncated")

// ParsePE parses the headers of a PE image and checks that every section's
// raw data and the certificate table lie inside b.
func ParsePE(b []byte) (*PE, error) {
	if len(b) < 0x40 || b[0] != 'M' || b[1] != 'Z' {
		return nil, fmt.Errorf("pe: no MZ header")
	}
	lfanew := int(binary.LittleEndian.Uint32(b[0x3c:]))
	if lfanew < 0x40 || lfanew > len(b)-24 {
		return nil, fmt.Errorf("pe: e_lfanew %#x out of file", lfanew)
	}
	if string(b[lfanew:lfanew+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("pe: no PE signature at %#x", lfanew)
	}
	coff := lfanew + 4
	nsec := int(binary.LittleEndian.Uint16(b[coff+2:]))
	optSize := int(binary.LittleEndian.Uint16(b[coff+16:]))
	opt := coff + 20
	if nsec > MaxSections {
		return nil, fmt.Errorf("pe: %d sections, at most %d", nsec, MaxSections)
	}
	if optSize < 2 || opt+optSize > len(b) {
		return nil, fmt.Errorf("pe: optional header: %w", errTrunc)
	}
	p := &PE{raw: b, checksumOff: opt + 64, certDirOff: -1}
	var ddOff, nrvaOff int
	switch magic := binary.LittleEndian.Uint16(b[opt:]); magic {
	case 0x10b: // PE32
		nrvaOff, ddOff = opt+92, opt+96
	case 0x20b: // PE32+
		nrvaOff, ddOff = opt+108, opt+112
	default:
		return nil, fmt.Errorf("pe: optional header magic %#x", magic)
	}
	if nrvaOff+4 > opt+optSize {
		return nil, fmt.Errorf("pe: optional header of %d bytes: %w", optSize, errTrunc)
	}
	p.SectionAlignment = binary.LittleEndian.Uint32(b[opt+32:])
	p.FileAlignment = binary.LittleEndian.Uint32(b[opt+36:])
	p.SizeOfImage = binary.LittleEndian.Uint32(b[opt+56:])
	p.SizeOfHeaders = binary.LittleEndian.Uint32(b[opt+60:])
	if p.SizeOfImage > MaxImageSize {
		return nil, fmt.Errorf("pe: SizeOfImage %#x above %#x", p.SizeOfImage, MaxImageSize)
	}
	nrva := binary.LittleEndian.Uint32(b[nrvaOff:])
	if nrva > 16 || ddOff+int(nrva)*8 > opt+optSize {
		return nil, fmt.Errorf("pe: %d data directories do not fit the optional header", nrva)
	}
	if nrva > 4 {
		p.certDirOff = ddOff + 4*8
		p.CertOff = binary.LittleEndian.Uint32(b[p.certDirOff:])
		p.CertSize = binary.LittleEndian.Uint32(b[p.certDirOff+4:])
		if p.CertSize != 0 && (uint64(p.CertOff)+uint64(p.CertSize) > uint64(len(b)) || p.CertOff < p.SizeOfHeaders) {
			return nil, fmt.Errorf("pe: certificate table [%#x+%#x] outside the file", p.CertOff, p.CertSize)
		}
	}
	if uint64(p.SizeOfHeaders) > uint64(len(b)) || int(p.SizeOfHeaders) < p.checksumOff+4 {
		return nil, fmt.Errorf("pe: SizeOfHeaders %#x out of the file", p.SizeOfHeaders)
	}
	st := opt + optSize
	if st+nsec*40 > int(p.SizeOfHeaders) {
		return nil, fmt.Errorf("pe: section table ends past SizeOfHeaders")
	}
	for i := range nsec {
		h := b[st+i*40 : st+i*40+40]
		s := Section{
			Name:             cstring(h[:8]),
			VirtualSize:      binary.LittleEndian.Uint32(h[8:]),
			VirtualAddress:   binary.LittleEndian.Uint32(h[12:]),
			SizeOfRawData:    binary.LittleEndian.Uint32(h[16:]),
			PointerToRawData: binary.LittleEndian.Uint32(h[20:]),
		}
		if uint64(s.PointerToRawData)+uint64(s.SizeOfRawData) > uint64(len(b)) {
			return nil, fmt.Errorf("pe: section %q raw data [%#x+%#x] past end of file (%#x)", s.Name, s.PointerToRawData, s.SizeOfRawData, len(b))
		}
		if s.VirtualSize > p.SizeOfImage {
			return nil, fmt.Errorf("pe: section %q VirtualSize %#x above SizeOfImage %#x", s.Name, s.VirtualSize, p.SizeOfImage)
		}
		p.Sections = append(p.Sections, s)
	}
	return p, nil
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// ChecksumOffset is the file offset of OptionalHeader.CheckSum.
func (p *PE) ChecksumOffset() int { return p.checksumOff }

// Section returns the named section or nil.
func (p *PE) Section(name string) *Section {
	for i := range p.Sections {
		if p.Sections[i].Name == name {
			return &p.Sections[i]
		}
	}
	return nil
}

// Memory returns a section as it is in memory after loading: VirtualSize
// bytes, zero-filled past the raw data. systemd-stub measures and uses this
// (src/boot/efi/pe.c: sizes are VirtualSize).
func (p *PE) Memory(s *Section) []byte {
	out := make([]byte, s.VirtualSize)
	n := min(s.VirtualSize, s.SizeOfRawData)
	copy(out, p.raw[s.PointerToRawData:s.PointerToRawData+n])
	return out
}

// CheckLayout checks that no two sections overlap in memory and that all
// lie inside SizeOfImage; systemd-stub warns "Overlapping PE sections
// detected" and the boot may corrupt itself.
func (p *PE) CheckLayout() error {
	for i, a := range p.Sections {
		end := uint64(a.VirtualAddress) + uint64(max(a.VirtualSize, 1))
		if end > uint64(p.SizeOfImage) {
			return fmt.Errorf("pe: section %q ends at %#x, past SizeOfImage %#x", a.Name, end, p.SizeOfImage)
		}
		for _, b := range p.Sections[i+1:] {
			bend := uint64(b.VirtualAddress) + uint64(max(b.VirtualSize, 1))
			if uint64(a.VirtualAddress) < bend && uint64(b.VirtualAddress) < end {
				return fmt.Errorf("pe: sections %q and %q overlap", a.Name, b.Name)
			}
		}
	}
	return nil
}
