package attestd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/cvmport"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
)

// Machine is the detected platform: how this machine attests, and how it
// reads its own measurements to pick its profile. The local reading is
// not evidence and proves nothing; it only chooses which reference to claim,
// which keyd then checks against the signed evidence.
type Machine struct {
	Platform attest.Platform
	Attester attest.Attester
	// Why says what the detection found, for the log.
	Why string
	// measure returns this machine's current values under the names
	// expectedValues uses; refs say which TPM PCRs are wanted.
	measure func(ctx context.Context, refs []*attest.Reference) (map[string][]byte, error)
	closer  io.Closer
}

// Close releases the device.
func (m *Machine) Close() error {
	if m.closer == nil {
		return nil
	}
	return m.closer.Close()
}

// CVMPort is the emulated CVM port's client (internal/attest/cvmport): the
// host-side emulator signs SNP reports or TDX quotes over virtio-serial,
// the transport interfaces of internal/attest/snp and tdx, so the rest of
// attestd runs the hardware path (ARCHITECTURE §7).
type CVMPort interface {
	Platform() attest.Platform
	GetExtendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error)
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
	CCEL(ctx context.Context) ([]byte, error)
	Close() error
}

// Probe is what detection looks at. Its fields default to the real machine
// (NewProbe); tests swap them.
type Probe struct {
	// Exists reports whether a device or file exists.
	Exists func(path string) bool
	// ReadFile reads small pseudo-files (/proc/cpuinfo).
	ReadFile func(path string) ([]byte, error)
	// FindCVMPort returns the emulated port's device or an error (no
	// port: not an emulated CVM).
	FindCVMPort func() (string, error)
	// OpenCVMPort opens the port at path (hello exchange, bounded time).
	OpenCVMPort func(ctx context.Context, path string) (CVMPort, error)
	// OpenTPM opens a TPM device for reading and writing.
	OpenTPM func(path string) (io.ReadWriteCloser, error)
	// SNPTransport and TDXTransport reach the real firmware.
	SNPTransport func() (snp.Transport, error)
	TDXTransport func() tdx.Transport
}

// NewProbe returns the production probe.
func NewProbe() *Probe {
	return &Probe{
		Exists:   func(p string) bool { _, err := os.Stat(p); return err == nil },
		ReadFile: readSmall,
		OpenTPM: func(p string) (io.ReadWriteCloser, error) {
			return os.OpenFile(p, os.O_RDWR, 0)
		},
		SNPTransport: snp.DefaultTransport,
		TDXTransport: func() tdx.Transport { return tdx.AutoTransport{} },
		FindCVMPort:  cvmport.Find,
		OpenCVMPort: func(ctx context.Context, path string) (CVMPort, error) {
			return cvmport.Open(ctx, path)
		},
	}
}

// Device paths the kernel drivers create (drivers/virt/coco/sev-guest,
// drivers/virt/coco/tdx-guest, drivers/char/tpm).
const (
	devSEVGuest = "/dev/sev-guest"
	devTDXGuest = "/dev/tdx_guest"
	devTPMRM    = "/dev/tpmrm0"
	devTPM      = "/dev/tpm0"
	tsmReport   = "/sys/kernel/config/tsm/report"
)

// ErrNoPlatform is returned when no attestation hardware was found.
var ErrNoPlatform = errors.New("no attestation hardware: no emulated CVM port, SEV-SNP guest, TDX guest or TPM")

// Detect finds the platform, in order: an emulated CVM port, an SEV-SNP
// guest, a TDX guest, a TPM. The order matters: a CVM may also have a vTPM,
// but its launch digest is the stronger root, and the emulated port exists
// only where the test harness put it. The provisioner has no say.
func (p *Probe) Detect(ctx context.Context, cfg *Config, log *slog.Logger) (*Machine, error) {
	if m, err := p.detectCVMPort(ctx, cfg, log); m != nil || err != nil {
		return m, err
	}
	cpu, _ := p.ReadFile("/proc/cpuinfo")
	flag := func(f string) bool { return cpuFlag(cpu, f) }
	switch {
	case p.Exists(devSEVGuest) || flag("sev_snp") && p.Exists(tsmReport):
		t, err := p.SNPTransport()
		if err != nil {
			return nil, fmt.Errorf("sev-snp guest: %w", err)
		}
		why := fmt.Sprintf("SEV-SNP guest (%s present: %v, cpu flag sev_snp: %v)", devSEVGuest, p.Exists(devSEVGuest), flag("sev_snp"))
		return snpMachine(t, why, nil), nil
	case p.Exists(devTDXGuest) || flag("tdx_guest") && p.Exists(tsmReport):
		ccel := cfg.CCELPath
		if ccel == "" {
			ccel = tdx.DefaultCCELPath
		}
		why := fmt.Sprintf("TDX guest (%s present: %v, cpu flag tdx_guest: %v), CC event log %s", devTDXGuest, p.Exists(devTDXGuest), flag("tdx_guest"), ccel)
		return tdxMachine(p.TDXTransport(), ccel, why, nil), nil
	}
	paths := []string{devTPMRM, devTPM}
	if cfg.TPMPath != "" {
		paths = []string{cfg.TPMPath}
	}
	for _, path := range paths {
		if !p.Exists(path) {
			continue
		}
		rw, err := p.OpenTPM(path)
		if err != nil {
			return nil, fmt.Errorf("tpm %s: %w", path, err)
		}
		m, err := tpmMachine(rw, tpm.Options{}, "TPM "+path)
		if err != nil {
			rw.Close()
			return nil, fmt.Errorf("tpm %s: %w", path, err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("%w (looked for %s, %s, %s)", ErrNoPlatform, devSEVGuest, devTDXGuest, strings.Join(paths, ", "))
}

// detectCVMPort returns (nil, nil) when there is no emulated port.
func (p *Probe) detectCVMPort(ctx context.Context, cfg *Config, log *slog.Logger) (*Machine, error) {
	path := cfg.CVMPortPath
	if path == "" {
		if p.FindCVMPort == nil {
			log.Debug("no emulated CVM port support in this build")
			return nil, nil
		}
		var err error
		if path, err = p.FindCVMPort(); err != nil {
			log.Debug("no emulated CVM port", "err", err)
			return nil, nil
		}
	}
	if p.OpenCVMPort == nil {
		return nil, fmt.Errorf("cvm port %s: this build cannot open it", path)
	}
	c, err := p.OpenCVMPort(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("cvm port %s: %w", path, err)
	}
	why := "emulated CVM port " + path
	switch c.Platform() {
	case attest.PlatformSNP:
		return snpMachine(c, why+" (sev-snp)", c), nil
	case attest.PlatformTDX:
		log2, err := c.CCEL(ctx)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("cvm port %s: CC event log: %w", path, err)
		}
		ccel := cfg.CCELPath
		if ccel == "" {
			ccel = filepath.Join(cfg.RunDir, "ccel")
		}
		if err := writeFileAtomic(ccel, log2, 0o600); err != nil {
			c.Close()
			return nil, fmt.Errorf("cvm port %s: write CC event log: %w", path, err)
		}
		return tdxMachine(c, ccel, why+" (tdx), CC event log written to "+ccel, c), nil
	default:
		c.Close()
		return nil, fmt.Errorf("cvm port %s: platform %q, want sev-snp or tdx", path, c.Platform())
	}
}

// cpuFlag reports whether /proc/cpuinfo's flags list f.
func cpuFlag(cpuinfo []byte, f string) bool {
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, x := range strings.Fields(v) {
			if x == f {
				return true
			}
		}
	}
	return false
}

func snpMachine(t snp.Transport, why string, c io.Closer) *Machine {
	return &Machine{Platform: attest.PlatformSNP, Attester: &snp.Attester{Transport: t}, Why: why, closer: c,
		measure: func(ctx context.Context, _ []*attest.Reference) (map[string][]byte, error) {
			// A report over zero report data: it commits to no session
			// and is never sent; only its launch values are read.
			rep, _, err := t.GetExtendedReport(ctx, [64]byte{})
			if err != nil {
				return nil, fmt.Errorf("sev-snp report: %w", err)
			}
			return snpValues(rep)
		}}
}

func tdxMachine(t tdx.Transport, ccel, why string, c io.Closer) *Machine {
	return &Machine{Platform: attest.PlatformTDX, Attester: &tdx.Attester{Transport: t, CCELPath: ccel}, Why: why, closer: c,
		measure: func(ctx context.Context, _ []*attest.Reference) (map[string][]byte, error) {
			q, err := t.Quote(ctx, [64]byte{})
			if err != nil {
				return nil, fmt.Errorf("tdx quote: %w", err)
			}
			return tdxValues(q)
		}}
}

// tpmMachine attests and reads PCRs over one TPM connection; the PCRs are
// read before any attestation, so the two never interleave.
func tpmMachine(rw io.ReadWriter, opts tpm.Options, why string) (*Machine, error) {
	a, err := tpm.NewAttester(rw, opts)
	if err != nil {
		return nil, err
	}
	var closer io.Closer = a
	if c, ok := rw.(io.Closer); ok {
		closer = multiCloser{a, c}
	}
	return &Machine{Platform: attest.PlatformTPM, Attester: a, Why: why, closer: closer,
		measure: func(ctx context.Context, refs []*attest.Reference) (map[string][]byte, error) {
			return tpmValues(rw, refs)
		}}, nil
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var errs []error
	for _, c := range m {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
