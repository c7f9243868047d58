// Package uki assembles a unified kernel image: systemd-stub plus .osrel,
// .cmdline, .initrd and .linux sections, added with objcopy.
//
// It is not a signer: Secure Boot signing happens after, on the output.
package uki

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/palisade-cc/palisade/internal/measure"
)

// DefaultStub is Debian's systemd-stub (package systemd-boot-efi).
const DefaultStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// Section is one section to add, with its content in a file.
type Section struct {
	Name string
	Path string
}

// Order is the order ukify (systemd 252) adds sections in; .linux goes last
// so the kernel's decompression has room after it. systemd-stub finds
// sections by name, so the order only fixes the layout, not the PCR11 order.
var Order = []string{".osrel", ".cmdline", ".initrd", ".linux"}

const pageSize = 0x1000

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// Layout returns each section's virtual address: the first after the stub's
// image end, each next after the previous one, page-aligned so none overlap.
func Layout(stubSizeOfImage uint64, sizes []uint64) []uint64 {
	va := alignUp(stubSizeOfImage, pageSize)
	out := make([]uint64, len(sizes))
	for i, n := range sizes {
		out[i] = va
		va = alignUp(va+n, pageSize)
	}
	return out
}

// Build writes the UKI to out. objcopy is taken from PATH unless given.
// timestamp becomes the COFF TimeDateStamp: objcopy (binutils 2.40) writes
// the current time there and ignores SOURCE_DATE_EPOCH.
func Build(ctx context.Context, objcopy, stub string, secs []Section, out string, timestamp uint32) error {
	if objcopy == "" {
		objcopy = "objcopy"
	}
	sb, err := os.ReadFile(stub)
	if err != nil {
		return fmt.Errorf("stub: %w", err)
	}
	sp, err := measure.ParsePE(sb)
	if err != nil {
		return fmt.Errorf("stub %s: %w", stub, err)
	}
	sizes := make([]uint64, len(secs))
	for i, s := range secs {
		fi, err := os.Stat(s.Path)
		if err != nil {
			return fmt.Errorf("section %s: %w", s.Name, err)
		}
		sizes[i] = uint64(fi.Size())
	}
	vmas := Layout(uint64(sp.SizeOfImage), sizes)
	args := []string{}
	for i, s := range secs {
		args = append(args,
			"--add-section", s.Name+"="+s.Path,
			"--set-section-flags", s.Name+"=data,readonly",
			"--change-section-vma", fmt.Sprintf("%s=%#x", s.Name, vmas[i]))
	}
	tmp := out + ".tmp"
	args = append(args, stub, tmp)
	cmd := exec.CommandContext(ctx, objcopy, args...)
	// objcopy takes the PE timestamp from its input; a fixed environment
	// keeps locale-dependent output out.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("objcopy: %v\n%s", err, b)
	}
	ub, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	if err := SetTimestamp(ub, timestamp); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, ub, 0o644); err != nil {
		return err
	}
	p, err := measure.ParsePE(ub)
	if err != nil {
		return fmt.Errorf("uki: %w", err)
	}
	if err := p.CheckLayout(); err != nil {
		return fmt.Errorf("uki: %w", err)
	}
	for i, s := range secs {
		got := p.Section(s.Name)
		if got == nil || uint64(got.VirtualSize) != sizes[i] || uint64(got.VirtualAddress) != vmas[i] {
			return fmt.Errorf("uki: section %s not where objcopy was told (%v)", s.Name, got)
		}
	}
	return os.Rename(tmp, filepath.Clean(out))
}

// SetTimestamp sets the COFF header's TimeDateStamp (PE/COFF §3.3) and
// recomputes the optional header's CheckSum (the ImageHlp algorithm: 16-bit
// one's-complement-style sum of the file with the CheckSum field as zero,
// plus the file length).
func SetTimestamp(b []byte, ts uint32) error {
	p, err := measure.ParsePE(b)
	if err != nil {
		return err
	}
	lfanew := int(binary.LittleEndian.Uint32(b[0x3c:]))
	binary.LittleEndian.PutUint32(b[lfanew+8:], ts)
	off := p.ChecksumOffset()
	binary.LittleEndian.PutUint32(b[off:], 0)
	binary.LittleEndian.PutUint32(b[off:], Checksum(b))
	return nil
}

// Checksum is the PE image checksum of b (whose CheckSum field must be 0).
func Checksum(b []byte) uint32 {
	var sum uint64
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint64(binary.LittleEndian.Uint16(b[i:]))
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(b)%2 == 1 {
		sum += uint64(b[len(b)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(len(b))
}
