package tdxtest

import (
	"context"
	"encoding/hex"
	"sync"
	"testing/fstest"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
)

// Fixture is a complete, consistent test TD: PKI, quoting enclave, event
// log, quote body, collateral bundle and the reference that accepts it.
type Fixture struct {
	PKI    *PKI
	Signer *Signer
	Log    *EventLog
	// Body is the quote body the transport signs; its RTMRs are the log's
	// and its REPORT_DATA is replaced by what Attest asks for.
	Body   Body
	Bundle fstest.MapFS
}

// DefaultBody is a plausible TD: SEPT_VE_DISABLE set (TD_ATTRIBUTES bit 28),
// debug off, XFAM 0x602e7 (x87, SSE, AVX, AVX-512, PK), fixed MRTD.
func DefaultBody() Body {
	b := Body{TeeTCBSVN: UpToDateSVN}
	b.TDAttributes[3] = 0x10
	b.XFAM = [8]byte{0xe7, 0x02, 0x06}
	for i := range b.MRTD {
		b.MRTD[i] = byte(0xa0 + i%16)
	}
	for i := range b.MRSEAM {
		b.MRSEAM[i] = byte(0x50 + i%7)
	}
	return b
}

// NewFixture builds a fixture with fresh keys.
func NewFixture() (*Fixture, error) {
	k, err := NewPKI(DefaultPlatform)
	if err != nil {
		return nil, err
	}
	s, err := NewSigner(k)
	if err != nil {
		return nil, err
	}
	files, err := Collateral{}.Files(k)
	if err != nil {
		return nil, err
	}
	l := DefaultEventLog()
	b := DefaultBody()
	b.RTMR = l.RTMR()
	return &Fixture{PKI: k, Signer: s, Log: l, Body: b, Bundle: files}, nil
}

var (
	sharedOnce sync.Once
	shared     *Fixture
	sharedErr  error
)

// Shared returns one fixture per process: key generation is the slowest
// part of a test, and most tests only read the fixture. Callers that change
// it must use NewFixture instead.
func Shared() (*Fixture, error) {
	sharedOnce.Do(func() { shared, sharedErr = NewFixture() })
	return shared, sharedErr
}

// Reference is the reference that accepts the fixture's TD exactly.
func (f *Fixture) Reference() *attest.Reference {
	b := f.Body
	t := &attest.TDXReference{
		MRTD:          attest.HexBytes(b.MRTD[:]),
		TDAttributes:  attest.HexBytes(b.TDAttributes[:]),
		XFAM:          attest.HexBytes(b.XFAM[:]),
		SeptVEDisable: b.TDAttributes[3]&0x10 != 0,
		MinTEETCBSVN:  attest.HexBytes(b.TeeTCBSVN[:]),
		MRSEAM:        []attest.HexBytes{b.MRSEAM[:]},
	}
	for i := range t.RTMR {
		t.RTMR[i] = attest.HexBytes(b.RTMR[i][:])
	}
	return &attest.Reference{Profile: "tdx-test", Platform: attest.PlatformTDX, TDX: t}
}

// Transport is a tdx.Transport that signs the fixture's body with the
// requested report data, as a CVM emulator would.
type Transport struct {
	F *Fixture
}

var _ tdx.Transport = (*Transport)(nil)

// Quote signs f.Body with reportData.
func (t *Transport) Quote(_ context.Context, reportData [64]byte) ([]byte, error) {
	b := t.F.Body
	b.ReportData = reportData
	return t.F.Signer.Quote(b)
}

// Evidence is what the fixture's attester would send for binding b.
func (f *Fixture) Evidence(b attest.Binding) (*attest.Evidence, error) {
	q, err := (&Transport{F: f}).Quote(context.Background(), b.SHA512())
	if err != nil {
		return nil, err
	}
	return &attest.Evidence{Platform: attest.PlatformTDX, Blobs: map[string][]byte{
		tdx.BlobQuote: q, tdx.BlobCCEL: f.Log.Bytes(64),
	}}, nil
}

// FMSPC is the fixture platform's FMSPC in hex.
func (f *Fixture) FMSPC() string { return hex.EncodeToString(f.PKI.Platform.FMSPC[:]) }

// Binding is a valid binding for tests.
func Binding(nonce byte) attest.Binding {
	b := attest.Binding{Role: attest.RoleNode, ClusterID: "test-cluster",
		Exporter: make([]byte, attest.ExporterSize), Nonce: make([]byte, attest.NonceSize)}
	for i := range b.Nonce {
		b.Nonce[i] = nonce
		b.Exporter[i] = byte(i)
	}
	return b
}
