// Package cvm is the host side of the QEMU harness's confidential-VM
// emulator: it computes the SEV-SNP launch MEASUREMENT or the TDX MRTD and
// RTMRs of a launch from the very files the harness launches, with the code
// images/build uses for reference values, and answers the guest's report,
// quote and CC-event-log requests over a virtio-serial port
// (internal/attest/cvmport), signing with test roots (snptest, tdxtest).
//
// It is not confidential hardware and proves nothing to anyone who does not
// pin its test roots; it exists so that attestd runs the hardware code path
// on machines without SEV-SNP or TDX (ARCHITECTURE §7, docs/harness-cvm.md).
package cvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/cvmport"
	"github.com/palisade-cc/palisade/internal/cvm/firmware"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
)

// Launch is one emulated confidential VM: what is measured and its shape.
type Launch struct {
	Platform attest.Platform
	// Firmware is the pinned firmware file a real CVM of this shape
	// launches (internal/cvm/firmware.Load: OVMF.amdsev.fd for SNP,
	// OVMF.inteltdx.fd for TDX); it is what is MEASURED. Under TCG the
	// guest executes Debian's generic OVMF instead (docs/harness-cvm.md).
	Firmware string
	// UKI is the UKI file booted. SNP measures its DirectBoot sections
	// exactly as images/build does, and QEMU is started with the files
	// DirectBootFiles writes; TDX measures RTMR1/RTMR2 from the UKI file
	// as images/build does.
	UKI string
	// VCPUs and VCPUType are the shape, with images/build's names
	// (reference.Shapes: 1 or 4 vCPUs of "EPYC-v4").
	VCPUs    int
	VCPUType string
	// GuestFeatures is SEV_FEATURES of each VMSA (SNP); 0 means 0x1
	// (SNPActive only), what images/build's shapes use.
	GuestFeatures uint64
	// Shape names the shape in the profile; "" means images/build's
	// naming, "<VCPUs>cpu-<lower-case VCPUType>" (e.g. "1cpu-epyc-v4").
	Shape string
	// Image is the image profile ("production", "debug"); "" means
	// production.
	Image string
	// SecureBoot is the emulated TDVF's Secure Boot state (TDX only).
	SecureBoot bool
	// Log receives refusals and malformed requests; nil discards.
	Log *slog.Logger
}

func (l *Launch) shape() reference.Shape {
	s := reference.Shape{Name: l.Shape, VCPUs: l.VCPUs, VCPUType: l.VCPUType, GuestFeatures: l.GuestFeatures}
	if s.GuestFeatures == 0 {
		s.GuestFeatures = 1
	}
	if s.Name == "" {
		s.Name = fmt.Sprintf("%dcpu-%s", l.VCPUs, strings.ToLower(l.VCPUType))
	}
	return s
}

func (l *Launch) image() string {
	if l.Image == "" {
		return "production"
	}
	return l.Image
}

// validate names the first bad field.
func (l *Launch) validate(want attest.Platform) error {
	switch {
	case l.Platform != want:
		return fmt.Errorf("launch.platform: %q, want %q", l.Platform, want)
	case l.Firmware == "":
		return errors.New("launch.firmware: empty")
	case l.UKI == "":
		return errors.New("launch.uki: empty")
	case l.VCPUs < 1:
		return fmt.Errorf("launch.vcpus: %d, want at least 1", l.VCPUs)
	case l.VCPUType == "":
		return errors.New("launch.vcpu_type: empty (e.g. EPYC-v4)")
	}
	return nil
}

// launched is a file the launch measured and its SHA-256 then.
type launched struct {
	what, path string
	sum        [32]byte
}

// Emulator answers one emulated CVM's requests. Build it with NewSNP or NewTDX.
type Emulator struct {
	l     Launch
	shape reference.Shape
	log   *slog.Logger
	fw    []byte // the measured firmware (for profile names)

	mu    sync.Mutex
	files []launched
	ln    net.Listener

	snp *snpState
	tdx *tdxState
}

var (
	_ cvmport.Handler           = (*Emulator)(nil)
	_ cvmport.MalformedReporter = (*Emulator)(nil)
)

// ErrChanged is the refusal when a launched file differs from what was
// measured: the emulator never signs for bytes it did not measure.
var ErrChanged = errors.New("launched file changed since the launch was measured")

func newEmulator(l Launch, want attest.Platform) (*Emulator, []byte, []byte, error) {
	if err := l.validate(want); err != nil {
		return nil, nil, nil, err
	}
	e := &Emulator{l: l, shape: l.shape(), log: l.Log}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	fw, err := e.measureFile("firmware", l.Firmware)
	if err != nil {
		return nil, nil, nil, err
	}
	uki, err := e.measureFile("uki", l.UKI)
	if err != nil {
		return nil, nil, nil, err
	}
	e.fw = fw
	sum := sha256.Sum256(fw)
	pinned := false
	for _, p := range firmware.Pinned {
		pinned = pinned || (p.Platform == string(want) && p.SHA256 == hex.EncodeToString(sum[:]))
	}
	e.log.Info("cvm emulator: launch measured", "platform", want, "firmware", l.Firmware,
		"firmware_sha256", hex.EncodeToString(sum[:]), "firmware_pinned", pinned, "uki", l.UKI,
		"shape", e.shape.Name)
	return e, fw, uki, nil
}

// measureFile reads a launched file and records its digest.
func (e *Emulator) measureFile(what, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("launch.%s: %w", what, err)
	}
	e.mu.Lock()
	e.files = append(e.files, launched{what: what, path: path, sum: sha256.Sum256(b)})
	e.mu.Unlock()
	return b, nil
}

// check re-reads and re-hashes every launched file: the emulator signs only
// while the files QEMU launched are the ones it measured.
func (e *Emulator) check(op string) error {
	e.mu.Lock()
	files := append([]launched(nil), e.files...)
	e.mu.Unlock()
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err == nil && sha256.Sum256(b) == f.sum {
			continue
		}
		if err == nil {
			err = ErrChanged
		}
		e.log.Error("cvm emulator: refusing to sign", "op", op, "file", f.what, "path", f.path, "err", err)
		return fmt.Errorf("%s: %s %s: %w", op, f.what, filepath.Base(f.path), err)
	}
	return nil
}

// Platform implements cvmport.Handler.
func (e *Emulator) Platform() attest.Platform { return e.l.Platform }

// Malformed implements cvmport.MalformedReporter.
func (e *Emulator) Malformed(err error) {
	e.log.Warn("cvm emulator: malformed input from the guest", "err", err)
}

// GetExtendedReport implements cvmport.Handler (SEV-SNP).
func (e *Emulator) GetExtendedReport(_ context.Context, reportData [64]byte) ([]byte, []byte, error) {
	if e.snp == nil {
		return nil, nil, fmt.Errorf("extended report: this emulator emulates %s", e.l.Platform)
	}
	if err := e.check("extended report"); err != nil {
		return nil, nil, err
	}
	return e.snp.report(reportData)
}

// Quote implements cvmport.Handler (TDX).
func (e *Emulator) Quote(_ context.Context, reportData [64]byte) ([]byte, error) {
	if e.tdx == nil {
		return nil, fmt.Errorf("quote: this emulator emulates %s", e.l.Platform)
	}
	if err := e.check("quote"); err != nil {
		return nil, err
	}
	return e.tdx.quote(reportData)
}

// CCEL implements cvmport.Handler (TDX): the CC event log area as Linux
// exposes it, events then 0xff padding.
func (e *Emulator) CCEL(context.Context) ([]byte, error) {
	if e.tdx == nil {
		return nil, fmt.Errorf("ccel: this emulator emulates %s", e.l.Platform)
	}
	if err := e.check("ccel"); err != nil {
		return nil, err
	}
	return append([]byte(nil), e.tdx.ccel...), nil
}

// Reference is what this launch measures to: the attest.Reference
// images/build writes for the same firmware, UKI, shape and image (for TDX,
// given TDXBoot as the reference boot).
func (e *Emulator) Reference() attest.Reference {
	if e.snp != nil {
		return e.snp.reference(e)
	}
	return e.tdx.reference(e)
}

// Listen creates the unix socket QEMU's chardev connects to. Call it before
// starting QEMU: QEMU fails at start-up if nothing listens.
func (e *Emulator) Listen(sock string) error {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("cvm emulator: listen: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ln != nil {
		ln.Close()
		return errors.New("cvm emulator: already listening")
	}
	e.ln = ln
	return nil
}

// QEMUArgs are the arguments that give the guest the emulator's port: a
// chardev connecting to sock (reconnecting each second if the emulator
// drops it), a virtio-serial bus (the harness runs QEMU with -nodefaults)
// and a port named cvmport.PortName.
func (e *Emulator) QEMUArgs(sock string) []string {
	return []string{
		"-chardev", "socket,id=palisadecvm,reconnect=1,path=" + strings.ReplaceAll(sock, ",", ",,"),
		"-device", "virtio-serial-pci,id=palisadecvmbus",
		"-device", "virtserialport,bus=palisadecvmbus.0,chardev=palisadecvm,name=" + cvmport.PortName,
	}
}

// Serve accepts QEMU's connections on the socket Listen made and answers
// the guest on each, one after the other, until ctx is done (then it
// returns nil and removes the socket).
func (e *Emulator) Serve(ctx context.Context) error {
	e.mu.Lock()
	ln := e.ln
	e.mu.Unlock()
	if ln == nil {
		return errors.New("cvm emulator: Serve before Listen")
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if ctx.Err() != nil {
			if c != nil {
				c.Close()
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("cvm emulator: accept: %w", err)
		}
		err = cvmport.Serve(ctx, c, e)
		c.Close()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !errors.Is(err, io.EOF):
			// A broken stream ends this connection only; QEMU
			// reconnects (reconnect=1).
			e.log.Warn("cvm emulator: connection ended", "err", err)
		}
	}
}
