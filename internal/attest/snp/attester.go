package snp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	tsmreport "github.com/google/go-configfs-tsm/report"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Blob names of SEV-SNP evidence.
const (
	BlobReport = "report"
	BlobCerts  = "certs"
)

// MaxCertTableSize bounds the certificate table blob: a VCEK, ASK and ARK
// in DER are under 5 KiB; hosts may append a few extra entries.
const MaxCertTableSize = 64 << 10

// Transport asks the SEV-SNP firmware for an extended attestation report at
// VMPL 0 (SNP_GUEST_REQUEST MSG_REPORT_REQ, SEV-SNP ABI §7.3) whose
// REPORT_DATA is reportData. It returns the raw report and the certificate
// table the host supplied (may be empty).
type Transport interface {
	GetExtendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error)
}

// Paths the production transports probe.
const (
	configfsTSMReport = "/sys/kernel/config/tsm/report"
	sevGuestDevice    = "/dev/sev-guest"
)

// ConfigFSTransport gets reports through the Linux configfs-tsm interface
// (Linux ≥ 6.7), the preferred path: the kernel serialises requests.
type ConfigFSTransport struct{}

// GetExtendedReport implements Transport.
func (ConfigFSTransport) GetExtendedReport(_ context.Context, rd [64]byte) ([]byte, []byte, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, nil, fmt.Errorf("configfs-tsm: %w", err)
	}
	resp, err := tsmreport.Get(c, &tsmreport.Request{
		InBlob:     rd[:],
		Privilege:  &tsmreport.Privilege{Level: 0},
		GetAuxBlob: true,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("configfs-tsm report: %w", err)
	}
	// The provider attribute names the backend; anything but the SEV guest
	// driver (e.g. tdx_guest) produced something we cannot parse.
	if p := string(bytes.TrimSpace([]byte(resp.Provider))); p != "sev_guest" {
		return nil, nil, fmt.Errorf("configfs-tsm provider %q, want sev_guest", p)
	}
	return resp.OutBlob, resp.AuxBlob, nil
}

// DeviceTransport gets reports through the /dev/sev-guest ioctl interface
// (SNP_GET_EXT_REPORT), for kernels without configfs-tsm.
type DeviceTransport struct{}

// GetExtendedReport implements Transport.
func (DeviceTransport) GetExtendedReport(_ context.Context, rd [64]byte) ([]byte, []byte, error) {
	d, err := client.OpenDevice()
	if err != nil {
		return nil, nil, fmt.Errorf("sev-guest device: %w", err)
	}
	defer d.Close()
	//lint:ignore SA1019 the deprecated call is the only one that takes an explicit VMPL on the ioctl path.
	report, certs, err := client.GetRawExtendedReportAtVmpl(d, rd, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sev-guest SNP_GET_EXT_REPORT: %w", err)
	}
	return report, certs, nil
}

// DefaultTransport picks configfs-tsm if the kernel offers it, else the
// sev-guest device, else fails naming both.
func DefaultTransport() (Transport, error) {
	return pickTransport(configfsTSMReport, sevGuestDevice)
}

func pickTransport(tsm, dev string) (Transport, error) {
	if fi, err := os.Stat(tsm); err == nil && fi.IsDir() {
		return ConfigFSTransport{}, nil
	}
	if _, err := os.Stat(dev); err == nil {
		return DeviceTransport{}, nil
	}
	return nil, fmt.Errorf("no SEV-SNP guest interface: neither %s nor %s exists", tsm, dev)
}

// Attester produces SEV-SNP evidence.
type Attester struct {
	// Transport reaches the firmware; nil means DefaultTransport().
	Transport Transport
}

var _ attest.Attester = (*Attester)(nil)

// Platform implements attest.Attester.
func (*Attester) Platform() attest.Platform { return attest.PlatformSNP }

// Identity implements attest.Attester: SNP evidence needs no challenge.
func (*Attester) Identity(context.Context) ([]byte, error) { return nil, nil }

// Attest implements attest.Attester: REPORT_DATA is b.SHA512(), VMPL 0.
func (a *Attester) Attest(ctx context.Context, challenge []byte, b attest.Binding) (*attest.Evidence, error) {
	if len(challenge) != 0 {
		return nil, errors.New("sev-snp attest: unexpected challenge (SNP evidence takes none)")
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("sev-snp attest: %w", err)
	}
	t := a.Transport
	if t == nil {
		var err error
		if t, err = DefaultTransport(); err != nil {
			return nil, fmt.Errorf("sev-snp attest: %w", err)
		}
	}
	rd := b.SHA512()
	report, certs, err := t.GetExtendedReport(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("sev-snp attest: %w", err)
	}
	// Catch a confused transport here rather than at the verifier, where it
	// would look like an attack.
	if len(report) != abi.ReportSize {
		return nil, fmt.Errorf("sev-snp attest: report is %d bytes, want %d", len(report), abi.ReportSize)
	}
	if !bytes.Equal(report[0x50:0x90], rd[:]) {
		return nil, errors.New("sev-snp attest: report's REPORT_DATA is not the requested binding")
	}
	if v := binary.LittleEndian.Uint32(report[0x30:0x34]); v != 0 {
		return nil, fmt.Errorf("sev-snp attest: report's VMPL is %d, want 0", v)
	}
	if len(certs) > MaxCertTableSize {
		return nil, fmt.Errorf("sev-snp attest: certificate table is %d bytes, at most %d", len(certs), MaxCertTableSize)
	}
	ev := &attest.Evidence{Platform: attest.PlatformSNP, Blobs: map[string][]byte{BlobReport: report}}
	if len(certs) > 0 {
		ev.Blobs[BlobCerts] = certs
	}
	return ev, nil
}
