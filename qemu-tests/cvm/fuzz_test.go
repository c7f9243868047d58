package cvm

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/cvmport"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
)

// guestBytes is a port whose guest side is fixed bytes.
type guestBytes struct {
	r   io.Reader
	out bytes.Buffer
}

func (g *guestBytes) Read(b []byte) (int, error)  { return g.r.Read(b) }
func (g *guestBytes) Write(b []byte) (int, error) { return g.out.Write(b) }

// FuzzEmulatorServe: whatever a guest writes to the port, the emulator
// answers or drops the stream; it never panics.
func FuzzEmulatorServe(f *testing.F) {
	dir := f.TempDir()
	fw, uki := filepath.Join(dir, "fw.fd"), filepath.Join(dir, "uki.efi")
	if err := os.WriteFile(fw, synthFirmware(3), 0o644); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(uki, synthUKI(11), 0o644); err != nil {
		f.Fatal(err)
	}
	chain, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		f.Fatal(err)
	}
	e, err := NewSNP(Launch{Platform: attest.PlatformSNP, Firmware: fw, UKI: uki, VCPUs: 1, VCPUType: "EPYC-v4"}, chain)
	if err != nil {
		f.Fatal(err)
	}
	frame := func(p []byte) []byte {
		return append(binary.BigEndian.AppendUint32([]byte("PCVM"), uint32(len(p))), p...)
	}
	hello := []byte{1, 1, 0, 0, 0, 1}
	report := append([]byte{1, 2, 0, 0, 0, 2, 1, 0, 0, 0, 64}, make([]byte, 64)...)
	f.Add(frame(hello))
	f.Add(append(frame(hello), frame(report)...))
	f.Add([]byte{1, 4, 0, 0, 0, 3})
	f.Add(frame([]byte{1, 3, 0, 0, 0, 4, 1, 0, 0, 0, 63}))
	f.Fuzz(func(t *testing.T, b []byte) {
		g := &guestBytes{r: bytes.NewReader(b)}
		cvmport.Serve(context.Background(), g, e)
	})
}
