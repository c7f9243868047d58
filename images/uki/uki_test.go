package uki

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/palisade-cc/palisade/internal/measure"
)

func TestLayout(t *testing.T) {
	got := Layout(0x19300, []uint64{10, 0x1000, 1, 0x2001})
	want := []uint64{0x1a000, 0x1b000, 0x1c000, 0x1d000}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestPCR11MatchesSystemdMeasure builds a UKI on the real stub from small
// sections and checks that measure.PCR11 over the built file equals
// systemd-measure's prediction from the section files (Debian package
// systemd, /usr/lib/systemd/systemd-measure).
func TestPCR11MatchesSystemdMeasure(t *testing.T) {
	const sm = "/usr/lib/systemd/systemd-measure"
	for _, p := range []string{DefaultStub, sm} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s missing (apt-get install systemd-boot-efi systemd): %v", p, err)
		}
	}
	dir := t.TempDir()
	content := map[string]string{
		".osrel":   "ID=palisade\nVERSION_ID=test\n",
		".cmdline": "console=ttyS0 palisade.keyd=10.0.0.2:7443",
		".initrd":  strings.Repeat("initrd", 1000),
		".linux":   strings.Repeat("kernel", 3000),
	}
	var secs []Section
	for _, name := range Order {
		p := filepath.Join(dir, strings.TrimPrefix(name, "."))
		if err := os.WriteFile(p, []byte(content[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		secs = append(secs, Section{name, p})
	}
	out := filepath.Join(dir, "uki.efi")
	if err := Build(context.Background(), "", DefaultStub, secs, out, 1700000000); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	p, err := measure.ParsePE(b)
	if err != nil {
		t.Fatal(err)
	}
	// --phase= : no systemd-pcrphase words, our initramfs runs no systemd.
	cmd := exec.Command(sm, "calculate", "--bank=sha256", "--phase=",
		"--linux="+secs[3].Path, "--osrel="+secs[0].Path, "--cmdline="+secs[1].Path, "--initrd="+secs[2].Path)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-measure: %v\n%s", err, res)
	}
	// Output: "# PCR[11] Phase <:>\n11:sha256=<hex>"
	_, want, ok := strings.Cut(strings.TrimSpace(string(res)), "sha256=")
	if !ok {
		t.Fatalf("systemd-measure output %q", res)
	}
	if d := cmp.Diff(want, hex.EncodeToString(measure.PCR11(p))); d != "" {
		t.Errorf("PCR11 (-systemd-measure +palisade):\n%s", d)
	}
	// Two builds from the same inputs, a second apart, are identical
	// (objcopy writes the current time; Build overwrites it).
	time.Sleep(1100 * time.Millisecond)
	out2 := filepath.Join(dir, "uki2.efi")
	if err := Build(context.Background(), "", DefaultStub, secs, out2, 1700000000); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(out2)
	if !bytes.Equal(b, b2) {
		t.Error("objcopy output differs between two runs")
	}
}

// TestChecksum checks Checksum against objcopy's own PE checksum of the stub
// copy it writes.
func TestChecksum(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "copy.efi")
	if b, err := exec.Command("objcopy", DefaultStub, out).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	p, err := measure.ParsePE(b)
	if err != nil {
		t.Fatal(err)
	}
	off := p.ChecksumOffset()
	want := binary.LittleEndian.Uint32(b[off:])
	binary.LittleEndian.PutUint32(b[off:], 0)
	if got := Checksum(b); got != want {
		t.Errorf("Checksum = %#x, objcopy wrote %#x", got, want)
	}
}
