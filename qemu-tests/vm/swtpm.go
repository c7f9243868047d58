package vm

import (
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// SWTPM is a software TPM 2.0 whose state lives in Dir: manufactured once
// with an RSA EK whose certificate, issued by the test CA, sits at the TCG
// NV index (EK Credential Profile §2.2.1.4), as a vendor's would.
type SWTPM struct {
	Dir string
	// EKCert is the DER certificate written to NV.
	EKCert []byte
	// Ctrl is the control socket QEMU's tpm-emulator connects to while a
	// VM runs (Start).
	Ctrl string
	cmd  *exec.Cmd
	logf *os.File
}

// NewSWTPM manufactures a TPM in a temporary directory: it starts swtpm
// with a command socket, creates the EK from the default RSA template the
// attester recreates at boot, has ca certify it and writes the certificate
// to NV, then stops swtpm (NV is persisted in the state file).
func NewSWTPM(t interface {
	Helper()
	TempDir() string
	Fatalf(string, ...any)
	Cleanup(func())
}, ca *tpmtest.CA) *SWTPM {
	t.Helper()
	dir := t.TempDir()
	s := &SWTPM{Dir: dir, Ctrl: filepath.Join(dir, "ctrl.sock")}
	srv := filepath.Join(dir, "srv.sock")
	log, err := os.Create(filepath.Join(dir, "swtpm-manufacture.log"))
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	defer log.Close()
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+srv, "--ctrl", "type=unixio,path="+filepath.Join(dir, "mctrl.sock"),
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("vm: start swtpm: %v", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	conn, err := dialRetry(srv, 5*time.Second)
	if err != nil {
		t.Fatalf("vm: swtpm command socket: %v (log %s)", err, log.Name())
	}
	defer conn.Close()
	tp := transport.FromReadWriter(&framedTPM{rw: conn})
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(tp)
	if err != nil {
		t.Fatalf("vm: swtpm: create EK: %v", err)
	}
	pub, err := ek.OutPublic.Contents()
	if err != nil {
		t.Fatalf("vm: swtpm: EK public: %v", err)
	}
	rsaDetail, err := pub.Parameters.RSADetail()
	if err != nil {
		t.Fatalf("vm: swtpm: EK parameters: %v", err)
	}
	rsaUnique, err := pub.Unique.RSA()
	if err != nil {
		t.Fatalf("vm: swtpm: EK unique: %v", err)
	}
	key, err := tpm2.RSAPub(rsaDetail, rsaUnique)
	if err != nil {
		t.Fatalf("vm: swtpm: EK key: %v", err)
	}
	der, err := ca.IssueEK(crypto.PublicKey(key))
	if err != nil {
		t.Fatalf("vm: swtpm: issue EK certificate: %v", err)
	}
	if err := tpmtest.WriteNV(tp, tpmtest.NVIndexRSA2048, der); err != nil {
		t.Fatalf("vm: swtpm: %v", err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: ek.ObjectHandle}).Execute(tp); err != nil {
		t.Fatalf("vm: swtpm: flush EK: %v", err)
	}
	// An orderly shutdown, so the next start is not counted as a
	// dictionary-attack-relevant reset.
	if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUClear}).Execute(tp); err != nil {
		t.Fatalf("vm: swtpm: shutdown: %v", err)
	}
	s.EKCert = der
	return s
}

// start runs swtpm for one VM: QEMU's tpm-emulator connects to Ctrl and
// initialises the TPM as a platform reset would.
func (s *SWTPM) start() error {
	os.Remove(s.Ctrl)
	log, err := os.OpenFile(filepath.Join(s.Dir, "swtpm.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	s.logf = log
	s.cmd = exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+s.Dir,
		"--ctrl", "type=unixio,path="+s.Ctrl, "--terminate")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start swtpm: %w", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(s.Ctrl); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("swtpm: control socket %s did not appear (log %s)", s.Ctrl, log.Name())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *SWTPM) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
	if s.logf != nil {
		s.logf.Close()
		s.logf = nil
	}
}

func dialRetry(path string, d time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// framedTPM reads exactly one TPM response per command from a stream: its
// header carries the size (TPM 2.0 Part 1 §18.5), and a stream read may
// return less.
type framedTPM struct {
	rw  io.ReadWriter
	buf []byte
}

func (f *framedTPM) Write(p []byte) (int, error) { return f.rw.Write(p) }

func (f *framedTPM) Read(p []byte) (int, error) {
	if len(f.buf) == 0 {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(f.rw, hdr); err != nil {
			return 0, err
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < 10 || size > 1<<16 {
			return 0, errors.New("swtpm: response size out of range")
		}
		body := make([]byte, size-10)
		if _, err := io.ReadFull(f.rw, body); err != nil {
			return 0, err
		}
		f.buf = append(hdr, body...)
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}
