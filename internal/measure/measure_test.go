package measure

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type sec struct {
	name  string
	data  []byte
	vsize uint32 // 0: len(data)
}

// makePE writes a minimal PE32+ image: headers in 0x200 bytes, sections
// at file alignment 0x200 and section alignment 0x1000, optional trailing
// data, and an optional certificate table at the end.
func makePE(t *testing.T, secs []sec, trailer, cert []byte) []byte {
	t.Helper()
	const lfanew, hdrs, falign, salign = 0x80, 0x400, 0x200, 0x1000
	b := make([]byte, hdrs)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], lfanew)
	copy(b[lfanew:], "PE\x00\x00")
	coff := lfanew + 4
	binary.LittleEndian.PutUint16(b[coff:], 0x8664)
	binary.LittleEndian.PutUint16(b[coff+2:], uint16(len(secs)))
	binary.LittleEndian.PutUint16(b[coff+16:], 240)
	opt := coff + 20
	binary.LittleEndian.PutUint16(b[opt:], 0x20b)
	binary.LittleEndian.PutUint32(b[opt+32:], salign)
	binary.LittleEndian.PutUint32(b[opt+36:], falign)
	binary.LittleEndian.PutUint32(b[opt+60:], hdrs)
	binary.LittleEndian.PutUint32(b[opt+64:], 0xdeadbeef) // checksum
	binary.LittleEndian.PutUint32(b[opt+108:], 16)
	st := opt + 240
	va := uint32(salign)
	for i, s := range secs {
		h := b[st+i*40:]
		copy(h, s.name)
		vs := s.vsize
		if vs == 0 {
			vs = uint32(len(s.data))
		}
		raw := (uint32(len(s.data)) + falign - 1) &^ (falign - 1)
		binary.LittleEndian.PutUint32(h[8:], vs)
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], raw)
		binary.LittleEndian.PutUint32(h[20:], uint32(len(b)))
		b = append(b, s.data...)
		b = append(b, make([]byte, int(raw)-len(s.data))...)
		va += (max(vs, raw) + salign - 1) &^ (salign - 1)
	}
	binary.LittleEndian.PutUint32(b[opt+56:], va)
	b = append(b, trailer...)
	if cert != nil {
		binary.LittleEndian.PutUint32(b[opt+112+32:], uint32(len(b)))
		binary.LittleEndian.PutUint32(b[opt+112+36:], uint32(len(cert)))
		b = append(b, cert...)
	}
	return b
}

// manualAuthenticode hashes the example layout by hand, the way the
// Authenticode spec lists the steps, as an independent check.
func manualAuthenticode(b []byte, secEnd int, certLen int) []byte {
	opt := 0x80 + 4 + 20
	h := sha256.New()
	h.Write(b[:opt+64])
	h.Write(b[opt+68 : opt+112+32])
	h.Write(b[opt+112+40 : 0x400])
	h.Write(b[0x400:secEnd])
	h.Write(b[secEnd : len(b)-certLen])
	return h.Sum(nil)
}

func TestAuthenticode(t *testing.T) {
	secs := []sec{{".text", bytes.Repeat([]byte{0xc3}, 700), 0}, {".data", []byte("hello"), 0x2000}}
	plain := makePE(t, secs, nil, nil)
	p, err := ParsePE(plain)
	if err != nil {
		t.Fatal(err)
	}
	want := manualAuthenticode(plain, len(plain), 0)
	if d := cmp.Diff(hex.EncodeToString(want), hex.EncodeToString(p.Authenticode())); d != "" {
		t.Fatalf("authenticode (-want +got):\n%s", d)
	}
	// Signing (certificate table + its directory entry) and the checksum
	// do not change the hash.
	signed := makePE(t, secs, nil, bytes.Repeat([]byte{7}, 64))
	binary.LittleEndian.PutUint32(signed[0x80+24+64:], 1234)
	ps, err := ParsePE(signed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ps.Authenticode(), want) {
		t.Error("certificate table or checksum changed the Authenticode hash")
	}
	// Trailing data after the sections is hashed.
	trail := makePE(t, secs, []byte("trailing"), bytes.Repeat([]byte{7}, 64))
	pt, _ := ParsePE(trail)
	if d := cmp.Diff(hex.EncodeToString(manualAuthenticode(trail, len(plain), 64)), hex.EncodeToString(pt.Authenticode())); d != "" {
		t.Errorf("trailing data (-want +got):\n%s", d)
	}
	if bytes.Equal(pt.Authenticode(), want) {
		t.Error("trailing data not hashed")
	}
	// A flipped byte in a section changes it.
	flipped := bytes.Clone(plain)
	flipped[0x400+3] ^= 1
	if bytes.Equal(mustAuth(t, flipped), want) {
		t.Error("flipped section byte did not change the hash")
	}
	// Sections are hashed in file order, not header order.
	swapped := bytes.Clone(plain)
	st := 0x80 + 24 + 240
	tmp := bytes.Clone(swapped[st : st+40])
	copy(swapped[st:st+40], swapped[st+40:st+80])
	copy(swapped[st+40:st+80], tmp)
	if d := cmp.Diff(hex.EncodeToString(manualAuthenticode(swapped, len(plain), 0)), hex.EncodeToString(mustAuth(t, swapped))); d != "" {
		t.Errorf("sections not hashed in file order (-want +got):\n%s", d)
	}
}

func mustAuth(t *testing.T, b []byte) []byte {
	t.Helper()
	h, err := AuthenticodeHash(b)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestParseErrors(t *testing.T) {
	good := makePE(t, []sec{{".text", []byte{1, 2, 3}, 0}}, nil, nil)
	for name, edit := range map[string]func([]byte) []byte{
		"no MZ":     func(b []byte) []byte { b[0] = 'X'; return b },
		"lfanew":    func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x3c:], 0xffffff); return b },
		"signature": func(b []byte) []byte { b[0x81] = 'X'; return b },
		"magic":     func(b []byte) []byte { b[0x80+24] = 0; return b },
		"section":   func(b []byte) []byte { return b[:0x401] },
		"cert":      func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0x80+24+112+36:], 0x10000); return b },
	} {
		if _, err := ParsePE(edit(bytes.Clone(good))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPCR11(t *testing.T) {
	linux := makePE(t, []sec{{".text", []byte("kernel LOADED_IMAGE::LoadOptions Linux initrd"), 0}}, nil, nil)
	uki := makePE(t, []sec{{".text", []byte("stub"), 0}, {".osrel", []byte("ID=palisade\n"), 0},
		{".cmdline", []byte("console=ttyS0"), 0}, {".initrd", []byte("initrd!"), 0}, {".linux", linux, 0}}, nil, nil)
	p, err := ParsePE(uki)
	if err != nil {
		t.Fatal(err)
	}
	h := func(s string) []byte { d := sha256.Sum256([]byte(s)); return d[:] }
	// systemd-stub order: .linux .osrel .cmdline .initrd, name with NUL then data.
	want := Replay(h(".linux\x00"), h(string(linux)), h(".osrel\x00"), h("ID=palisade\n"),
		h(".cmdline\x00"), h("console=ttyS0"), h(".initrd\x00"), h("initrd!"))
	if d := cmp.Diff(hex.EncodeToString(want), hex.EncodeToString(PCR11(p))); d != "" {
		t.Errorf("PCR11 (-want +got):\n%s", d)
	}
	got, err := ComputeTPM(uki, false)
	if err != nil {
		t.Fatal(err)
	}
	u16 := []byte{}
	for _, c := range "console=ttyS0" {
		u16 = append(u16, byte(c), 0)
	}
	u16 = append(u16, 0, 0)
	if d := cmp.Diff(hex.EncodeToString(Replay(h(string(u16)), h("initrd!"))), hex.EncodeToString(got.PCR9)); d != "" {
		t.Errorf("PCR9 (-want +got):\n%s", d)
	}
	a := mustAuth(t, uki)
	k := mustAuth(t, linux)
	if d := cmp.Diff(hex.EncodeToString(Replay(h(string(callingAction)), h("\x00\x00\x00\x00"), a, k)), hex.EncodeToString(got.PCR4)); d != "" {
		t.Errorf("PCR4 secure boot off (-want +got):\n%s", d)
	}
	sb, err := ComputeTPM(uki, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(hex.EncodeToString(Replay(h(string(callingAction)), h("\x00\x00\x00\x00"), a)), hex.EncodeToString(sb.PCR4)); d != "" {
		t.Errorf("PCR4 secure boot on (-want +got):\n%s", d)
	}
	// A kernel without the tagged-event markers measures nothing into PCR9.
	if got := PCR9Events(KernelPCR9{}, "x", []byte("y")); len(got) != 0 {
		t.Errorf("old kernel: %d PCR9 events", len(got))
	}
}

func TestLayout(t *testing.T) {
	uki := makePE(t, []sec{{".a", []byte("a"), 0x3000}, {".b", []byte("b"), 0}}, nil, nil)
	p, _ := ParsePE(uki)
	if err := p.CheckLayout(); err != nil {
		t.Fatalf("good layout: %v", err)
	}
	p.Sections[1].VirtualAddress = p.Sections[0].VirtualAddress + 0x100
	if err := p.CheckLayout(); err == nil {
		t.Error("overlap accepted")
	}
}

func FuzzParsePE(f *testing.F) {
	f.Add(makePE(&testing.T{}, []sec{{".text", []byte{1}, 0}, {".linux", []byte("x"), 0x100}}, []byte("t"), []byte("cert")))
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePE(b)
		if err != nil {
			return
		}
		p.Authenticode()
		_ = p.CheckLayout()
		if p.SizeOfImage > 16<<20 {
			return // keep the fuzzer fast; the bound itself is MaxImageSize
		}
		for i := range p.Sections {
			{
				p.Memory(&p.Sections[i])
			}
		}
		_ = PCR11Events(p)
		if s := p.Section(".linux"); s != nil {
			_, _ = PCR4Events(p, false)
		}
	})
}
