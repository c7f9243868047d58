package attestd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

// TestBackoffStopsAtDeadline: hints that refuse connections are retried in
// rounds whose pauses double with jitter up to the cap; attestd gives up
// before a pause would pass the deadline, with exit class 5.
func TestBackoffStopsAtDeadline(t *testing.T) {
	w := newWorld(t, worldOpts{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	dead := ln.Addr().String()
	ln.Close()
	must(t, os.WriteFile(w.cfg.HintsPath, []byte(`{"keyd":["`+dead+`"],"cluster":"`+testCluster+`"}`), 0o600))
	w.cfg.Deadline, w.cfg.BackoffMin, w.cfg.BackoffMax = time.Minute, time.Second, 8*time.Second
	now := time.Unix(1_800_000_000, 0)
	var sleeps []time.Duration
	m, ca := w.snpNode()
	_, err = Run(context.Background(), w.cfg, Deps{
		Detect:  func(context.Context, *Config, *slog.Logger) (*Machine, error) { return m, nil },
		NodeID:  func() (string, error) { return testNodeID, nil },
		Console: &w.console,
		Now:     func() time.Time { return now },
		Sleep: func(_ context.Context, d time.Duration) error {
			sleeps = append(sleeps, d)
			now = now.Add(d)
			return nil
		},
		Jitter: func(n int64) int64 { return n - 1 }, // the longest pause
	}, slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrDeadline) || ExitCode(err) != ExitDeadline {
		t.Fatalf("err %v, want ErrDeadline", err)
	}
	var total time.Duration
	for i, d := range sleeps {
		pause := min(time.Second<<i, 8*time.Second)
		if d < pause/2 || d > pause {
			t.Errorf("pause %d: %s, want in [%s, %s]", i, d, pause/2, pause)
		}
		total += d
	}
	if total > time.Minute || total < 50*time.Second || len(sleeps) < 6 {
		t.Errorf("%d pauses totalling %s, want about the 1m deadline", len(sleeps), total)
	}
	if ca.n.Load() != 0 {
		t.Error("evidence produced for an unreachable keyd")
	}
	if !w.consoleHas("retrying in") || !w.consoleHas("giving up after") {
		t.Errorf("no progress on the console:\n%s", w.console.String())
	}
}

func TestParseHints(t *testing.T) {
	for _, c := range []struct {
		in, err string
	}{
		{`{"keyd":["10.0.0.2:7443","[fd00::1]:7443"],"cluster":"c1","sources":["cmdline"]}`, ""},
		{`{"keyd":["10.0.0.2:7443"]}`, "no keyd address or no cluster"},
		{`{"cluster":"c1"}`, "no keyd address or no cluster"},
		{`{"keyd":["10.0.0.2"],"cluster":"c1"}`, "keyd[0]"},
		{`{"keyd":["10.0.0.2:0"],"cluster":"c1"}`, "port out of"},
		{`{"keyd":[":7443"],"cluster":"c1"}`, "empty host"},
		{`{"keyd":["a:1","a:1"],"cluster":"c1"}`, "repeated"},
		{`{"keyd":["a:1"],"cluster":"c1","extra":1}`, "unknown field"},
		{`{"keyd":["a:1"],"cluster":"c1"} {}`, "trailing"},
		{`{"keyd":["a:1"],"cluster":"` + strings.Repeat("c", 65) + `"}`, "at most 64"},
	} {
		_, err := ParseHints([]byte(c.in))
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("ParseHints(%s): %v, want %q", c.in, err, c.err)
		}
	}
}

func FuzzParseHints(f *testing.F) {
	f.Add([]byte(`{"keyd":["10.0.0.2:7443","[fd00::1]:7443"],"cluster":"c1"}`))
	f.Add([]byte(`{"keyd":[],"cluster":""}`))
	f.Add([]byte(`{"keyd":["a:1","a:1"],"cluster":"c"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHints(b)
		if err != nil {
			return
		}
		if h.Cluster == "" || len(h.Keyd) == 0 || len(h.Keyd) > 16 {
			t.Fatalf("accepted unusable hints %+v", h)
		}
		for _, a := range h.Keyd {
			if _, _, err := net.SplitHostPort(a); err != nil {
				t.Fatalf("accepted %q: %v", a, err)
			}
		}
	})
}

func TestNodeID(t *testing.T) {
	ifs := func() ([]net.Interface, error) {
		return []net.Interface{
			{Name: "lo", Flags: net.FlagLoopback, HardwareAddr: nil},
			{Name: "eth0", HardwareAddr: net.HardwareAddr{0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF}},
		}, nil
	}
	file := func(s string) func(string) ([]byte, error) {
		return func(p string) ([]byte, error) {
			if p != productUUIDPath || s == "" {
				return nil, os.ErrNotExist
			}
			return []byte(s), nil
		}
	}
	for _, c := range []struct{ uuid, want string }{
		{"4C4C4544-0042-3510-8052-B3C04F4D3232\n", "4c4c4544-0042-3510-8052-b3c04f4d3232"},
		{"00000000-0000-0000-0000-000000000000\n", "52-54-00-ab-cd-ef"},
		{"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "52-54-00-ab-cd-ef"},
		{"not-a-uuid", "52-54-00-ab-cd-ef"},
		{"", "52-54-00-ab-cd-ef"},
	} {
		got, err := NodeID(file(c.uuid), ifs)
		if err != nil || got != c.want {
			t.Errorf("uuid %q: %q, %v; want %q", c.uuid, got, err, c.want)
		}
		claims := attest.Claims{NodeID: got, Role: attest.RoleNode, Profile: "p"}
		if err := claims.Validate(); err != nil {
			t.Errorf("node id %q does not validate: %v", got, err)
		}
	}
	if _, err := NodeID(file(""), func() ([]net.Interface, error) { return nil, nil }); err == nil {
		t.Error("no UUID and no MAC gave an ID")
	}
}

// FuzzMachineValues feeds the local readers of reports and quotes: never a
// panic, and an accepted SNP report is exactly 1184 bytes.
func FuzzMachineValues(f *testing.F) {
	c, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		f.Fatal(err)
	}
	rep, _, err := (&snptest.Transport{Chain: c}).GetExtendedReport(context.Background(), [64]byte{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rep)
	if fx, err := tdxtest.Shared(); err == nil {
		if q, err := (&tdxtest.Transport{F: fx}).Quote(context.Background(), [64]byte{}); err == nil {
			f.Add(q)
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := snpValues(b); err == nil && (len(b) != snpReportSize || len(v["measurement"]) != 48) {
			t.Fatalf("accepted a %d-byte report", len(b))
		}
		if v, err := tdxValues(b); err == nil && len(v) != 8 {
			t.Fatalf("tdx values %v", v)
		}
	})
}

// TestTDXValuesMatchReference: the quote reader names the values the
// reference pins the same way, so a TD matches its own reference.
func TestTDXValuesMatchReference(t *testing.T) {
	fx, err := tdxtest.Shared()
	must(t, err)
	q, err := (&tdxtest.Transport{F: fx}).Quote(context.Background(), [64]byte{})
	must(t, err)
	have, err := tdxValues(q)
	must(t, err)
	if d := firstDifference(fx.Reference(), have); d != "" {
		t.Fatalf("own reference differs: %s", d)
	}
	ref := fx.Reference()
	ref.TDX.RTMR[2] = bytes.Repeat([]byte{9}, 48)
	if d := firstDifference(ref, have); !strings.HasPrefix(d, "rtmr2: have ") {
		t.Fatalf("changed RTMR2: %q", d)
	}
}

type fakePort struct {
	plat attest.Platform
	snptest.Transport
	ccel   []byte
	closed bool
}

func (p *fakePort) Platform() attest.Platform                       { return p.plat }
func (p *fakePort) Quote(context.Context, [64]byte) ([]byte, error) { return nil, errors.New("no") }
func (p *fakePort) CCEL(context.Context) ([]byte, error)            { return p.ccel, nil }
func (p *fakePort) Close() error                                    { p.closed = true; return nil }

// TestDetect: the order is emulated port, SEV-SNP, TDX, TPM; the reason
// is logged; a TDX port's event log lands where the attester reads it.
func TestDetect(t *testing.T) {
	exists := func(paths ...string) func(string) bool {
		return func(p string) bool {
			for _, x := range paths {
				if x == p {
					return true
				}
			}
			return false
		}
	}
	noPort := func() (string, error) { return "", errors.New("not found") }
	log := slog.New(slog.DiscardHandler)
	run := t.TempDir()
	cfg := &Config{RunDir: run}
	base := func() *Probe {
		return &Probe{Exists: exists(), ReadFile: func(string) ([]byte, error) { return nil, os.ErrNotExist },
			FindCVMPort: noPort, OpenCVMPort: func(context.Context, string) (CVMPort, error) { return nil, errors.New("unused") },
			OpenTPM:      func(string) (io.ReadWriteCloser, error) { return nil, errors.New("unused") },
			SNPTransport: func() (snp.Transport, error) { return &snptest.Transport{}, nil },
			TDXTransport: func() tdx.Transport { return &tdxtest.Transport{} }}
	}

	p := base()
	p.Exists = exists(devSEVGuest, devTDXGuest, devTPMRM)
	m, err := p.Detect(context.Background(), cfg, log)
	if err != nil || m.Platform != attest.PlatformSNP {
		t.Fatalf("sev-guest and tdx_guest and tpm: %v %v, want sev-snp first", m, err)
	}
	p = base()
	p.ReadFile = func(string) ([]byte, error) { return []byte("processor\t: 0\nflags\t\t: fpu tdx_guest sse\n"), nil }
	p.Exists = exists(tsmReport, devTPMRM)
	if m, err = p.Detect(context.Background(), cfg, log); err != nil || m.Platform != attest.PlatformTDX {
		t.Fatalf("configfs-tsm with tdx_guest flag: %v %v, want tdx", m, err)
	}
	p = base()
	if _, err = p.Detect(context.Background(), cfg, log); !errors.Is(err, ErrNoPlatform) {
		t.Fatalf("nothing: %v, want ErrNoPlatform", err)
	}

	port := &fakePort{plat: attest.PlatformTDX, ccel: []byte("event log")}
	p = base()
	p.Exists = exists(devSEVGuest, devTPMRM)
	p.FindCVMPort = func() (string, error) { return "/dev/vport1p1", nil }
	p.OpenCVMPort = func(_ context.Context, path string) (CVMPort, error) { return port, nil }
	m, err = p.Detect(context.Background(), cfg, log)
	if err != nil || m.Platform != attest.PlatformTDX || !strings.Contains(m.Why, "/dev/vport1p1") {
		t.Fatalf("emulated TDX port next to sev-guest: %+v %v, want the port first", m, err)
	}
	if b, err := os.ReadFile(filepath.Join(run, "ccel")); err != nil || string(b) != "event log" {
		t.Fatalf("ccel: %q %v", b, err)
	}
	m.Close()
	if !port.closed {
		t.Error("port not closed with the machine")
	}
}
