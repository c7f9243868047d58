package tdx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
	"github.com/google/go-tdx-guest/client"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Evidence blob names (document names of the TDX evidence).
const (
	// BlobQuote is the raw TDX quote v4.
	BlobQuote = "quote"
	// BlobCCEL is the CC event log (UEFI 2.10 §38.4) as firmware left it.
	BlobCCEL = "ccel"
)

// DefaultCCELPath is where Linux exposes the CC event log area that the ACPI
// CCEL table points at (drivers/acpi/tables.c, "CCEL" data).
const DefaultCCELPath = "/sys/firmware/acpi/tables/data/CCEL"

// Transport gets a TDX quote v4 whose REPORT_DATA is reportData.
type Transport interface {
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
}

// ConfigFSTransport gets quotes through the kernel's configfs-tsm report
// interface (/sys/kernel/config/tsm/report, Linux ≥ 6.7).
type ConfigFSTransport struct{}

// Quote implements Transport.
func (ConfigFSTransport) Quote(_ context.Context, reportData [64]byte) ([]byte, error) {
	resp, err := linuxtsm.GetReport(&report.Request{InBlob: reportData[:]})
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm report: %w", err)
	}
	if resp.Provider != "tdx_guest" {
		return nil, fmt.Errorf("configfs-tsm report: provider %q, want tdx_guest", resp.Provider)
	}
	return resp.OutBlob, nil
}

// DeviceTransport gets quotes through the /dev/tdx_guest ioctl interface
// (TDX_CMD_GET_REPORT0 then the GetQuote hypercall), for older kernels.
type DeviceTransport struct{}

// Quote implements Transport.
func (DeviceTransport) Quote(_ context.Context, reportData [64]byte) ([]byte, error) {
	d, err := client.OpenDevice()
	if err != nil {
		return nil, fmt.Errorf("open /dev/tdx_guest: %w", err)
	}
	defer d.Close()
	q, err := client.GetRawQuote(d, reportData)
	if err != nil {
		return nil, fmt.Errorf("/dev/tdx_guest quote: %w", err)
	}
	return q, nil
}

// AutoTransport uses configfs-tsm where the kernel has it and the device
// otherwise.
type AutoTransport struct{}

// Quote implements Transport.
func (AutoTransport) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if _, err := os.Stat("/sys/kernel/config/tsm/report"); err == nil {
		return ConfigFSTransport{}.Quote(ctx, reportData)
	}
	return DeviceTransport{}.Quote(ctx, reportData)
}

// Attester gathers TDX evidence: a quote over the binding and the CC event
// log that replays to the quoted RTMRs.
type Attester struct {
	// Transport defaults to AutoTransport.
	Transport Transport
	// CCELPath defaults to DefaultCCELPath.
	CCELPath string
}

var _ attest.Attester = (*Attester)(nil)

// Platform implements attest.Attester.
func (a *Attester) Platform() attest.Platform { return attest.PlatformTDX }

// Identity implements attest.Attester: TDX evidence needs no challenge.
func (a *Attester) Identity(context.Context) ([]byte, error) { return nil, nil }

// Attest implements attest.Attester. REPORT_DATA is b.SHA512().
func (a *Attester) Attest(ctx context.Context, challenge []byte, b attest.Binding) (*attest.Evidence, error) {
	if len(challenge) != 0 {
		return nil, errors.New("tdx attest: unexpected challenge, TDX takes none")
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("tdx attest: %w", err)
	}
	t := a.Transport
	if t == nil {
		t = AutoTransport{}
	}
	q, err := t.Quote(ctx, b.SHA512())
	if err != nil {
		return nil, fmt.Errorf("tdx attest: %w", err)
	}
	if len(q) == 0 || len(q) > attest.MaxBlobSize {
		return nil, fmt.Errorf("tdx attest: quote is %d bytes, want 1-%d", len(q), attest.MaxBlobSize)
	}
	ccel, err := readCCEL(a.CCELPath)
	if err != nil {
		return nil, fmt.Errorf("tdx attest: %w", err)
	}
	return &attest.Evidence{Platform: attest.PlatformTDX, Blobs: map[string][]byte{
		BlobQuote: q, BlobCCEL: ccel,
	}}, nil
}

func readCCEL(path string) ([]byte, error) {
	if path == "" {
		path = DefaultCCELPath
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("CC event log: %w", err)
	}
	defer f.Close()
	// Read one byte more than allowed to tell "too big" from "exactly full".
	b, err := io.ReadAll(io.LimitReader(f, attest.MaxBlobSize+1))
	if err != nil {
		return nil, fmt.Errorf("CC event log %s: %w", path, err)
	}
	if len(b) > attest.MaxBlobSize {
		return nil, fmt.Errorf("CC event log %s: more than %d bytes", path, attest.MaxBlobSize)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("CC event log %s: empty", path)
	}
	return b, nil
}
