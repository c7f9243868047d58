package ovmf_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/cvm/fwtest"
	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
)

func TestGUIDRoundTrip(t *testing.T) {
	for _, s := range []string{"96b582de-1fb2-45f7-baea-a366c55a082d", "dc886566-984a-4798-a75e-5585a7bf67cc"} {
		g, err := ovmf.ParseGUID(s)
		if err != nil {
			t.Fatal(err)
		}
		if g.String() != s {
			t.Errorf("ParseGUID(%q).String() = %q", s, g)
		}
	}
	// The byte encoding edk2 writes for the footer GUID (ResetVectorVtf0.asm).
	want := []byte{0xDE, 0x82, 0xB5, 0x96, 0xB2, 0x1F, 0xF7, 0x45, 0xBA, 0xEA, 0xA3, 0x66, 0xC5, 0x5A, 0x08, 0x2D}
	if diff := cmp.Diff(want, ovmf.FooterGUID[:]); diff != "" {
		t.Errorf("footer GUID bytes (-want +got):\n%s", diff)
	}
	if _, err := ovmf.ParseGUID("not-a-guid"); err == nil {
		t.Error("ParseGUID accepted garbage")
	}
}

func TestParseSynthetic(t *testing.T) {
	sev := fwtest.DefaultSEV()
	tdx := fwtest.DefaultTDX()
	im, err := ovmf.Parse(fwtest.Image(&sev, tdx))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := im.GPA(), uint64(ovmf.FourGiB-fwtest.Size); got != want {
		t.Errorf("GPA = %#x, want %#x", got, want)
	}
	secs, err := im.SEVMetadata()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sev.Sections, secs); diff != "" {
		t.Errorf("SEV sections (-want +got):\n%s", diff)
	}
	base, size, err := im.SEVHashTable()
	if err != nil || base != sev.HashBase || size != sev.HashSize {
		t.Errorf("SEVHashTable = %#x, %#x, %v; want %#x, %#x", base, size, err, sev.HashBase, sev.HashSize)
	}
	eip, err := im.SEVESResetEIP()
	if err != nil || eip != sev.ResetEIP {
		t.Errorf("SEVESResetEIP = %#x, %v; want %#x", eip, err, sev.ResetEIP)
	}
	got, err := im.TDXMetadata()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tdx, got); diff != "" {
		t.Errorf("TDX sections (-want +got):\n%s", diff)
	}
}

func TestMissingTables(t *testing.T) {
	im, err := ovmf.Parse(fwtest.Image(nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.SEVMetadata(); err == nil || !strings.Contains(err.Error(), "not in the firmware's GUID table") {
		t.Errorf("SEVMetadata without the entry: %v", err)
	}
	if _, err := im.TDXMetadata(); err == nil {
		t.Error("TDXMetadata without the entry succeeded")
	}
}

// TestMalformed changes one thing of a valid image each and checks the error
// names what is wrong.
func TestMalformed(t *testing.T) {
	sev := fwtest.DefaultSEV()
	valid := func() []byte { return fwtest.Image(&sev, fwtest.DefaultTDX()) }
	end := fwtest.Size - 0x20
	sevDesc := 0x1000
	tdxDesc := 0x2000
	u32 := func(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
	u64 := func(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	tests := []struct {
		name   string
		mutate func(b []byte) []byte
		call   func(im *ovmf.Image) error
		want   string
	}{
		{"size not pages", func(b []byte) []byte { return b[:len(b)-1] }, nil, "multiple of 4096"},
		{"empty", func(b []byte) []byte { return nil }, nil, "multiple of 4096"},
		{"no footer", func(b []byte) []byte { b[end-1] ^= 1; return b }, nil, "no footer GUID table"},
		{"table length too big", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[end-18:], 0xffff); return b }, nil, "footer table length"},
		{"table length too small", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[end-18:], 17); return b }, nil, "footer table length"},
		{"entry length zero", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[end-18-18:], 0); return b }, nil, "length 0 out of range"},
		{"entry length past table", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[end-18-18:], 0x7000); return b }, nil, "out of range"},
		{"sev signature", func(b []byte) []byte { b[sevDesc] = 'X'; return b }, sevMeta, `signature "XSEV"`},
		{"sev version", func(b []byte) []byte { u32(b, sevDesc+8, 2); return b }, sevMeta, "version 2"},
		{"sev zero sections", func(b []byte) []byte { u32(b, sevDesc+12, 0); return b }, sevMeta, "0 sections"},
		{"sev length short", func(b []byte) []byte { u32(b, sevDesc+4, 20); return b }, sevMeta, "length 20"},
		{"sev unknown type", func(b []byte) []byte { u32(b, sevDesc+16+8, 9); return b }, sevMeta, "unknown type 0x9"},
		{"sev unaligned", func(b []byte) []byte { u32(b, sevDesc+16, 0x800001); return b }, sevMeta, "whole pages"},
		{"sev beyond 4G", func(b []byte) []byte { u32(b, sevDesc+16, 0xfffff000); return b }, sevMeta, "beyond 4 GiB"},
		{"tdx signature", func(b []byte) []byte { b[tdxDesc] = 'X'; return b }, tdxMeta, `signature "XDVF"`},
		{"tdx version", func(b []byte) []byte { u32(b, tdxDesc+8, 0); return b }, tdxMeta, "version 0"},
		{"tdx count huge", func(b []byte) []byte { u32(b, tdxDesc+12, 1<<20); return b }, tdxMeta, "sections, want 1..256"},
		{"tdx length past image", func(b []byte) []byte { u32(b, tdxDesc+4, 1<<20); return b }, tdxMeta, "at most"},
		{"tdx unknown type", func(b []byte) []byte { u32(b, tdxDesc+16+24, 7); return b }, tdxMeta, "unknown type 7"},
		{"tdx unknown attribute", func(b []byte) []byte { u32(b, tdxDesc+16+28, 4|1); return b }, tdxMeta, "unknown attributes"},
		{"tdx raw past image", func(b []byte) []byte { u32(b, tdxDesc+16, 0xf000); return b }, tdxMeta, "beyond the image"},
		{"tdx raw larger than memory", func(b []byte) []byte { u64(b, tdxDesc+16+32+16, 0x1000); return b }, tdxMeta, "larger than its memory"},
		{"tdx measured not all data", func(b []byte) []byte { u64(b, tdxDesc+16+16, 0x9000); return b }, tdxMeta, "must be all data"},
		{"tdx extendmr with page_aug", func(b []byte) []byte { u32(b, tdxDesc+16+28, 3); return b }, tdxMeta, "EXTENDMR with PAGE_AUG"},
		{"tdx unaligned memory", func(b []byte) []byte { u64(b, tdxDesc+16+8, 0x1234); return b }, tdxMeta, "whole pages"},
		{"tdx hob with data", func(b []byte) []byte { u32(b, tdxDesc+16+64+4, 0x10); return b }, tdxMeta, "want none"},
		{"tdx extendmr on temp mem", func(b []byte) []byte { u32(b, tdxDesc+16+96+28, 1); return b }, tdxMeta, "EXTENDMR"},
		{"tdx no bfv", func(b []byte) []byte { u32(b, tdxDesc+16+24, ovmf.TDXCFV); return b }, tdxMeta, "no BFV"},
		{"tdx offset past image", func(b []byte) []byte {
			i := bytes.LastIndex(b, ovmf.TDXMetadataOffsetGUID[:])
			u32(b, i-18-4+16, 0xfffffff)
			return b
		}, tdxMeta, "descriptor offset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.mutate(valid())
			im, err := ovmf.Parse(b)
			if tt.call != nil {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				err = tt.call(im)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func sevMeta(im *ovmf.Image) error { _, err := im.SEVMetadata(); return err }
func tdxMeta(im *ovmf.Image) error { _, err := im.TDXMetadata(); return err }

// FuzzParse feeds arbitrary bytes placed at the end of an image through
// every parser: none may panic, and accepted metadata must be consistent.
func FuzzParse(f *testing.F) {
	sev := fwtest.DefaultSEV()
	full := fwtest.Image(&sev, fwtest.DefaultTDX())
	f.Add(full[fwtest.Size-0x3000:])
	f.Add(fwtest.Image(nil, nil)[fwtest.Size-0x1000:])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tail []byte) {
		if len(tail) > 3*ovmf.PageSize {
			tail = tail[:3*ovmf.PageSize]
		}
		b := make([]byte, 3*ovmf.PageSize)
		copy(b[len(b)-len(tail):], tail)
		im, err := ovmf.Parse(b)
		if err != nil {
			return
		}
		if secs, err := im.SEVMetadata(); err == nil {
			for _, s := range secs {
				if s.Size == 0 || s.Base%ovmf.PageSize != 0 || uint64(s.Base)+uint64(s.Size) > ovmf.FourGiB {
					t.Fatalf("accepted bad SEV section %+v", s)
				}
			}
		}
		if secs, err := im.TDXMetadata(); err == nil {
			for _, s := range secs {
				if uint64(s.DataOffset)+uint64(s.RawDataSize) > uint64(len(b)) || uint64(s.RawDataSize) > s.MemoryDataSize {
					t.Fatalf("accepted bad TDX section %+v", s)
				}
			}
		}
		_, _, _ = im.SEVHashTable()
		_, _ = im.SEVESResetEIP()
	})
}
