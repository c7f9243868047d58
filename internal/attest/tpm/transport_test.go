package tpm

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// serveRaw serves the simulator on a unix socket the way swtpm's data
// channel does: raw commands in, raw responses out, written in two pieces
// so the client must reassemble them.
func serveRaw(t *testing.T, sim *tpmtest.TPM) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "swtpm.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for {
			hdr := make([]byte, 10)
			if _, err := io.ReadFull(c, hdr); err != nil {
				return
			}
			cmd := make([]byte, binary.BigEndian.Uint32(hdr[2:6]))
			copy(cmd, hdr)
			if _, err := io.ReadFull(c, cmd[10:]); err != nil {
				return
			}
			if _, err := sim.RW.Write(cmd); err != nil {
				return
			}
			rsp := make([]byte, 8192)
			n, err := sim.RW.Read(rsp)
			if err != nil {
				return
			}
			_, _ = c.Write(rsp[:3])
			_, _ = c.Write(rsp[3:n])
		}
	}()
	return path
}

// TestOpenSocket runs the full flow through Open("unix:…").
func TestOpenSocket(t *testing.T) {
	sim := tpmtest.Start(t, tpmtest.Config{})
	a, err := Open("unix:"+serveRaw(t, sim), Options{EventLogPath: sim.LogPath})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	v := &Verifier{Roots: sim.CA.Roots(), Intermediates: sim.CA.Intermediates()}
	ctx := context.Background()
	id, err := a.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send, keep, err := v.Challenge(id)
	if err != nil {
		t.Fatal(err)
	}
	b := testBinding(3)
	ev, err := a.Attest(ctx, send, b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, ev, attest.Input{Binding: b, Identity: id, Kept: keep, Reference: sim.Reference("p")}); err != nil {
		t.Fatal(err)
	}
}

// TestOpenErrors checks that what is not a TPM is refused.
func TestOpenErrors(t *testing.T) {
	for _, path := range []string{"unix:" + filepath.Join(t.TempDir(), "none"), "tcp:127.0.0.1:1", filepath.Join(t.TempDir(), "tpm0")} {
		if _, err := Open(path, Options{}); err == nil {
			t.Errorf("Open(%q) succeeded", path)
		}
	}
}
