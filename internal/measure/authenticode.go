package measure

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"sort"
)

// Authenticode returns the SHA-256 Authenticode digest of a PE image as
// UEFI firmware measures it (Microsoft "Windows Authenticode Portable
// Executable Signature Format", "Calculating the PE Image Hash"; EDK2
// DxeTpm2MeasureBootLib MeasurePeImageAndExtend): the headers without the
// CheckSum and the Certificate Table entry, the sections sorted by file
// offset, then any data after the sections except the certificate table.
func (p *PE) Authenticode() []byte {
	h := sha256.New()
	p.authenticode(h)
	return h.Sum(nil)
}

// AuthenticodeHash is Authenticode over an image in b.
func AuthenticodeHash(b []byte) ([]byte, error) {
	p, err := ParsePE(b)
	if err != nil {
		return nil, err
	}
	return p.Authenticode(), nil
}

func (p *PE) authenticode(h hash.Hash) {
	b := p.raw
	h.Write(b[:p.checksumOff])
	if p.certDirOff < 0 {
		// No certificate entry (NumberOfRvaAndSizes <= 4): hash the rest
		// of the headers (EDK2 does the same).
		h.Write(b[p.checksumOff+4 : p.SizeOfHeaders])
	} else {
		h.Write(b[p.checksumOff+4 : p.certDirOff])
		h.Write(b[p.certDirOff+8 : p.SizeOfHeaders])
	}
	secs := make([]Section, 0, len(p.Sections))
	for _, s := range p.Sections {
		if s.SizeOfRawData != 0 {
			secs = append(secs, s)
		}
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].PointerToRawData < secs[j].PointerToRawData })
	sum := uint64(p.SizeOfHeaders)
	for _, s := range secs {
		h.Write(b[s.PointerToRawData : s.PointerToRawData+s.SizeOfRawData])
		sum += uint64(s.SizeOfRawData)
	}
	// Trailing data: everything from SUM_OF_BYTES_HASHED to the end of the
	// file minus the certificate table size.
	if end := uint64(len(b)) - uint64(p.CertSize); end > sum {
		h.Write(b[sum:end])
	}
}

// String describes the layout, for diagnostics.
func (s Section) String() string {
	return fmt.Sprintf("%-8s va=%#x vsize=%#x raw=%#x+%#x", s.Name, s.VirtualAddress, s.VirtualSize, s.PointerToRawData, s.SizeOfRawData)
}
