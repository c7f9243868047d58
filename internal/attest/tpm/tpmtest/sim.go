// Package tpmtest provides test roots and a provisioned TPM simulator for tests
// of the tpm platform and of packages built on it.
//
// It is test support only: its CAs are created in memory, its simulator has
// well-known behaviour, and nothing in production may import it.
package tpmtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/palisade-cc/palisade/internal/attest"
)

// EK certificate NV indices (TCG EK Credential Profile 2.0 §2.2.1.4).
const (
	NVIndexRSA2048 = 0x01C00002
	NVIndexECCP256 = 0x01C0000A
)

// Config says how to provision a simulator.
type Config struct {
	// CA signs the EK certificate; nil creates a new one.
	CA *CA
	// RSA provisions an RSA-2048 EK (NV 0x01C00002) instead of ECC P-256
	// (NV 0x01C0000A).
	RSA bool
	// Events are measured and logged; nil measures DefaultBoot().
	Events []Event
}

// TPM is a running, provisioned simulator. Only one can run per process:
// Start blocks until the previous one is closed.
type TPM struct {
	// RW speaks the TPM command protocol to the simulator.
	RW  *simulator.Simulator
	CA  *CA
	Log *Log
	// EKCert is the DER EK certificate written to NV.
	EKCert []byte
	// LogPath is a file holding Log.Bytes, standing in for securityfs.
	LogPath string

	close sync.Once
}

// Close stops the simulator early, so that another can start; the test's
// cleanup does it otherwise.
func (tp *TPM) Close() {
	tp.close.Do(func() { _ = tp.RW.Close() })
}

// Start starts the simulator, provisions an EK certificate issued by
// cfg.CA, measures cfg.Events into the PCRs and writes the event log to a
// file under t.TempDir(). The simulator is closed when the test ends.
func Start(t testing.TB, cfg Config) *TPM {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatalf("tpmtest: start simulator: %v", err)
	}
	if cfg.CA == nil {
		if cfg.CA, err = NewCA("Palisade Test TPM Vendor"); err != nil {
			_ = sim.Close()
			t.Fatalf("tpmtest: %v", err)
		}
	}
	events := cfg.Events
	if events == nil {
		events = DefaultBoot().Events()
	}
	log, err := BuildLog(events)
	if err != nil {
		_ = sim.Close()
		t.Fatalf("tpmtest: event log: %v", err)
	}
	tp := &TPM{RW: sim, CA: cfg.CA, Log: log, LogPath: filepath.Join(t.TempDir(), "binary_bios_measurements")}
	t.Cleanup(tp.Close)
	if err := os.WriteFile(tp.LogPath, log.Bytes, 0o600); err != nil {
		t.Fatalf("tpmtest: %v", err)
	}
	if tp.EKCert, err = provisionEK(transport.FromReadWriter(sim), cfg.CA, cfg.RSA); err != nil {
		t.Fatalf("tpmtest: provision EK: %v", err)
	}
	for i, ev := range log.Events {
		if ev.Type == EvNoAction {
			continue
		}
		if err := extend(transport.FromReadWriter(sim), ev.PCR, ev.SHA1, ev.SHA256); err != nil {
			t.Fatalf("tpmtest: event %d: %v", i, err)
		}
	}
	return tp
}

// Reference pins the log's values of ReferencePCRs.
func (tp *TPM) Reference(profile string) *attest.Reference {
	return tp.Log.Reference(profile, ReferencePCRs...)
}

// Extend extends pcr with the hash of data in both banks, outside the event
// log: what an attacker who reaches the TPM after boot can do.
func (tp *TPM) Extend(pcr int, data []byte) error {
	s1, s256 := sha1.Sum(data), sha256.Sum256(data)
	return extend(transport.FromReadWriter(tp.RW), pcr, s1[:], s256[:])
}

func extend(t transport.TPM, pcr int, sha1d, sha256d []byte) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA1, Digest: sha1d},
			{HashAlg: tpm2.TPMAlgSHA256, Digest: sha256d},
		}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("extend PCR %d: %w", pcr, err)
	}
	return nil
}

// provisionEK creates the EK from the default template, has ca certify it
// and writes the certificate to the template's NV index under the platform
// hierarchy, as a TPM manufacturer does.
func provisionEK(t transport.TPM, ca *CA, rsa bool) ([]byte, error) {
	tmpl, index := tpm2.ECCEKTemplate, tpm2.TPMHandle(NVIndexECCP256)
	if rsa {
		tmpl, index = tpm2.RSAEKTemplate, tpm2.TPMHandle(NVIndexRSA2048)
	}
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create EK: %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(t)
	pub, err := ek.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, err
	}
	cert, err := ca.IssueEK(key)
	if err != nil {
		return nil, fmt.Errorf("issue EK certificate: %w", err)
	}
	if err := WriteNV(t, index, cert); err != nil {
		return nil, err
	}
	return cert, nil
}

// WriteNV defines index under the platform hierarchy with the attributes of
// an EK certificate index (PC Client PTP §5.5: platform-created, readable
// with an empty auth or by the owner) and writes data to it.
func WriteNV(t transport.TPM, index tpm2.TPMHandle, data []byte) error {
	def := tpm2.NVDefineSpace{
		AuthHandle: tpm2.TPMRHPlatform,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: index,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{PPWrite: true, PPRead: true, OwnerRead: true, AuthRead: true,
				NoDA: true, PlatformCreate: true, NT: tpm2.TPMNTOrdinary},
			DataSize: uint16(len(data)),
		}),
	}
	if _, err := def.Execute(t); err != nil {
		return fmt.Errorf("define NV %#x: %w", index, err)
	}
	pub, err := def.PublicInfo.Contents()
	if err != nil {
		return err
	}
	name, err := tpm2.NVName(pub)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += 512 {
		end := min(off+512, len(data))
		_, err := tpm2.NVWrite{
			AuthHandle: tpm2.TPMRHPlatform,
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: *name},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("write NV %#x at %d: %w", index, off, err)
		}
	}
	return nil
}
