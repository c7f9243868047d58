package cvm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-sev-guest/abi"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	cvmsnp "github.com/palisade-cc/palisade/internal/cvm/snp"
)

type snpState struct {
	chain       *snptest.Chain
	boot        *cvmsnp.Boot
	measurement []byte
}

// NewSNP measures an SEV-SNP launch: MEASUREMENT is internal/cvm/snp.Compute
// over the firmware, the UKI's direct-boot kernel, initrd and cmdline
// (reference.DirectBoot, the function images/build uses) and the shape. Reports
// are signed by chain's VCEK.
func NewSNP(l Launch, chain *snptest.Chain) (*Emulator, error) {
	if chain == nil {
		return nil, fmt.Errorf("sev-snp emulator: no test chain")
	}
	e, fw, uki, err := newEmulator(l, attest.PlatformSNP)
	if err != nil {
		return nil, fmt.Errorf("sev-snp emulator: %w", err)
	}
	boot, err := reference.DirectBoot(uki)
	if err != nil {
		return nil, fmt.Errorf("sev-snp emulator: launch.uki: %w", err)
	}
	m, err := cvmsnp.Compute(cvmsnp.Input{Firmware: fw, Boot: boot, VCPUs: e.shape.VCPUs,
		VCPUType: e.shape.VCPUType, GuestFeatures: e.shape.GuestFeatures})
	if err != nil {
		return nil, fmt.Errorf("sev-snp emulator: measurement: %w", err)
	}
	e.snp = &snpState{chain: chain, boot: boot, measurement: m}
	e.log.Info("cvm emulator: sev-snp measurement", "measurement", fmt.Sprintf("%x", m))
	return e, nil
}

// DirectBootFiles writes the kernel and initrd QEMU is given for measured
// direct boot (-kernel, -initrd) into dir and returns their paths and the
// command line (-append): the bytes NewSNP measured, taken from the UKI by
// reference.DirectBoot. Both files are launched files from then on: a report is
// refused if either changes.
func (e *Emulator) DirectBootFiles(dir string) (kernel, initrd, cmdline string, err error) {
	if e.snp == nil {
		return "", "", "", fmt.Errorf("direct boot files: this emulator emulates %s (TDX boots the UKI itself)", e.l.Platform)
	}
	b := e.snp.boot
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	for _, f := range []struct {
		what, path string
		data       []byte
	}{{"kernel", kernel, b.Kernel}, {"initrd", initrd, b.Initrd}} {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			return "", "", "", fmt.Errorf("direct boot files: %w", err)
		}
		got, err := e.measureFile(f.what, f.path)
		if err != nil {
			return "", "", "", fmt.Errorf("direct boot files: %w", err)
		}
		if !bytes.Equal(got, f.data) {
			return "", "", "", fmt.Errorf("direct boot files: %s %s: %w", f.what, f.path, ErrChanged)
		}
	}
	return kernel, initrd, b.Cmdline, nil
}

// report signs an ATTESTATION_REPORT (SEV-SNP ABI §7.3, Table 23): the
// chain's spec-conformant defaults (version 3, policy ABI 1.51 with debug,
// migration agent and SMT off, VMPL 0, reported = committed = current =
// launch TCB, chip ID, VCEK signer) with this launch's MEASUREMENT, an
// all-zero HOST_DATA (QEMU sets none without host-data=) and the guest's
// REPORT_DATA. certs is the extended request's table: VCEK, ASK, ARK.
func (s *snpState) report(reportData [64]byte) ([]byte, []byte, error) {
	r := s.chain.Report(reportData)
	r.Measurement = bytes.Clone(s.measurement)
	r.HostData = make([]byte, abi.HostDataSize)
	raw, err := s.chain.Sign(r)
	if err != nil {
		return nil, nil, fmt.Errorf("extended report: sign: %w", err)
	}
	return raw, s.chain.CertTable(), nil
}

// reference is images/build's SEV-SNP reference for this launch: the profile
// name of reference.SNPProfile and the owner policy the test chain satisfies
// exactly (its product, TCB, firmware build and API version, GUEST_SVN 1,
// no SMT), with the computed MEASUREMENT.
func (s *snpState) reference(e *Emulator) attest.Reference {
	c := s.chain
	return attest.Reference{
		Profile:  reference.SNPProfile(e.fw, e.shape.Name, e.l.image()),
		Platform: attest.PlatformSNP,
		SNP: &attest.SNPReference{
			Product:       c.Product,
			Measurement:   bytes.Clone(s.measurement),
			MinGuestSVN:   1,
			MinTCB:        snp.DecomposeTCB(c.Product, c.TCB),
			MinBuild:      snptest.Build,
			MinAPIVersion: snptest.APIMajor<<8 | snptest.APIMinor,
		},
	}
}
