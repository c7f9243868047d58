package inventory

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { c.t = c.t.Add(time.Second); return c.t }

func open(t testing.TB, opts Options) *Store {
	t.Helper()
	if opts.Now == nil {
		c := &clock{time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
		opts.Now = c.now
	}
	s, err := Open(filepath.Join(t.TempDir(), "inv.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var worker = Profile{Name: "worker", Image: "uki.efi", ImageARM64: "uki-arm64.efi", Platform: "tpm", Role: "worker", KeydHints: []string{"10.0.0.1:7443"}}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBootAnswers(t *testing.T) {
	s := open(t, Options{HTTPBase: "http://192.0.2.1:8080/images/", BIOSFile: "undionly.kpxe", DefaultProfile: "worker"})
	if err := s.PutProfile(worker); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mac := mustMAC(t, "52:54:00:00:00:01")
	// Unaccepted: no answer, but recorded.
	a, err := s.Boot(ctx, Request{MAC: mac, Arch: ArchX64UEFI, PXE: true, VendorClass: "PXEClient:Arch:00007", MessageType: "DISCOVER"})
	if err != nil || a != (Answer{}) {
		t.Fatalf("unaccepted machine got %+v, %v; want no answer", a, err)
	}
	m, err := s.Machine("52-54-00-00-00-01")
	if err != nil || m.State != Discovered || m.ArchName != "x64-uefi" {
		t.Fatalf("machine = %+v, %v", m, err)
	}
	if _, err := s.Accept(mac.String(), "", "admin"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  Request
		want Answer
	}{
		{"x64 uefi pxe", Request{Arch: ArchX64UEFI, PXE: true}, Answer{TFTPFile: "uki.efi"}},
		{"x64 uefi pxe alt", Request{Arch: ArchX64UEFIAlt, PXE: true}, Answer{TFTPFile: "uki.efi"}},
		{"x64 http", Request{Arch: ArchX64UEFIHTTP, HTTPBoot: true}, Answer{HTTPURL: "http://192.0.2.1:8080/images/uki.efi"}},
		{"arm64 pxe", Request{Arch: ArchARM64UEFI, PXE: true}, Answer{TFTPFile: "uki-arm64.efi"}},
		{"arm64 http", Request{Arch: ArchARM64UEFIHTT, HTTPBoot: true}, Answer{HTTPURL: "http://192.0.2.1:8080/images/uki-arm64.efi"}},
		{"bios", Request{Arch: ArchBIOS, PXE: true}, Answer{TFTPFile: "undionly.kpxe"}},
		{"ipxe", Request{Arch: ArchX64UEFI, UserClass: "iPXE", PXE: true}, Answer{HTTPURL: "http://192.0.2.1:8080/images/uki.efi"}},
		{"ia32 no image", Request{Arch: ArchIA32UEFI, PXE: true}, Answer{}},
		{"not a boot client", Request{Arch: ArchX64UEFI}, Answer{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.MAC = mac
			got, err := s.Boot(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			// Every request of an accepted machine carries its hints,
			// whatever the boot answer (TestBootHints covers them).
			tc.want.Hints = "keyd=10.0.0.1:7443"
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNoHTTPBaseNoBIOS(t *testing.T) {
	s := open(t, Options{DefaultProfile: "worker"})
	s.PutProfile(worker)
	mac := mustMAC(t, "52:54:00:00:00:02")
	s.Accept(mac.String(), "", "admin")
	for _, req := range []Request{{MAC: mac, Arch: ArchX64UEFIHTTP, HTTPBoot: true}, {MAC: mac, Arch: ArchBIOS, PXE: true}} {
		if a, err := s.Boot(context.Background(), req); err != nil || a != (Answer{Hints: "keyd=10.0.0.1:7443"}) {
			t.Errorf("Boot(%+v) = %+v, %v; want no boot answer, only hints", req, a, err)
		}
	}
	// iPXE without an HTTP base falls back to TFTP.
	if a, _ := s.Boot(context.Background(), Request{MAC: mac, Arch: ArchX64UEFI, PXE: true, UserClass: "iPXE"}); a.TFTPFile != "uki.efi" {
		t.Errorf("iPXE without HTTP base = %+v, want TFTP uki.efi", a)
	}
}

func TestDiscoveryProfile(t *testing.T) {
	s := open(t, Options{DiscoveryProfile: "discover"})
	s.PutProfile(Profile{Name: "discover", Image: "discover.efi", Platform: "tpm", Role: "worker"})
	a, err := s.Boot(context.Background(), Request{MAC: mustMAC(t, "52:54:00:00:00:03"), Arch: ArchX64UEFI, PXE: true})
	if err != nil || a.TFTPFile != "discover.efi" {
		t.Fatalf("discovered machine got %+v, %v; want discover.efi", a, err)
	}
	// Fetching the discovery image does not make the machine booting.
	if err := s.RecordTransfer(Transfer{Remote: netip.MustParseAddr("10.0.0.9"), File: "discover.efi", Protocol: "tftp", Bytes: 10}); err != nil {
		t.Fatal(err)
	}
	m, _ := s.Machine("52:54:00:00:00:03")
	if m.State != Discovered {
		t.Errorf("state after discovery image = %s, want discovered", m.State)
	}
	// Accepted without a profile and no default: no answer.
	s.Accept(m.MAC, "", "admin")
	if a, _ := s.Boot(context.Background(), Request{MAC: mustMAC(t, m.MAC), Arch: ArchX64UEFI, PXE: true}); a != (Answer{}) {
		t.Errorf("accepted machine without profile got %+v", a)
	}
}

func TestStates(t *testing.T) {
	s := open(t, Options{})
	s.PutProfile(worker)
	ctx := context.Background()
	mac := mustMAC(t, "52:54:00:00:00:04")
	if _, err := s.Report(mac.String(), Attested, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("report on unknown machine: %v, want not found", err)
	}
	s.Boot(ctx, Request{MAC: mac, Arch: ArchX64UEFI, PXE: true})
	if _, err := s.Report(mac.String(), Attested, ""); !errors.Is(err, ErrConflict) {
		t.Errorf("report on discovered machine: %v, want conflict", err)
	}
	if _, err := s.Accept(mac.String(), "nope", "admin"); !isField(err, "profile") {
		t.Errorf("accept with missing profile: %v, want field error on profile", err)
	}
	if _, err := s.Accept(mac.String(), "worker", "admin"); err != nil {
		t.Fatal(err)
	}
	a, _ := s.Boot(ctx, Request{MAC: mac, Arch: ArchX64UEFI, PXE: true})
	// A failed transfer changes nothing; a completed one means booting.
	ip := netip.MustParseAddr("10.0.0.4")
	s.RecordTransfer(Transfer{Remote: ip, File: "/" + a.TFTPFile, Err: errors.New("timeout"), Protocol: "tftp"})
	if m, _ := s.Machine(mac.String()); m.State != Accepted {
		t.Errorf("state after failed transfer = %s, want accepted", m.State)
	}
	s.RecordTransfer(Transfer{Remote: ip, File: "/" + a.TFTPFile, Bytes: 100, Protocol: "tftp"})
	m, _ := s.Machine(mac.String())
	if m.State != Booting || m.IP != "10.0.0.4" {
		t.Errorf("after transfer: state %s ip %q, want booting 10.0.0.4", m.State, m.IP)
	}
	if _, err := s.Report(mac.String(), "booting", ""); !isField(err, "state") {
		t.Errorf("report of booting: %v, want field error on state", err)
	}
	if _, err := s.Report(mac.String(), Joined, "node-7"); err != nil {
		t.Fatal(err)
	}
	tl, err := s.Timeline(mac.String())
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range tl {
		kinds = append(kinds, string(e.Kind)+":"+string(e.State))
	}
	want := []string{"discover:discovered", "dhcp:", "accept:accepted", "dhcp:", "tftp:", "tftp:booting", "state:joined"}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Errorf("timeline (-want +got):\n%s", diff)
	}
	if tl[4].Error != "timeout" {
		t.Errorf("failed transfer event error = %q", tl[4].Error)
	}
	if err := s.Forget(mac.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Machine(mac.String()); !errors.Is(err, ErrNotFound) {
		t.Errorf("forgotten machine: %v", err)
	}
	if ev, _ := s.Events(0, 0); len(ev) != 0 {
		t.Errorf("forgotten machine left %d events", len(ev))
	}
	if err := s.Forget(mac.String()); !errors.Is(err, ErrNotFound) {
		t.Errorf("forget twice: %v", err)
	}
}

func isField(err error, field string) bool {
	var fe *FieldError
	return errors.As(err, &fe) && fe.Field == field
}

func TestAttributionFIFO(t *testing.T) {
	s := open(t, Options{DefaultProfile: "worker"})
	s.PutProfile(worker)
	ctx := context.Background()
	macs := []string{"52:54:00:00:01:01", "52:54:00:00:01:02"}
	for _, m := range macs {
		s.Accept(m, "", "admin")
		s.Boot(ctx, Request{MAC: mustMAC(t, m), Arch: ArchX64UEFI, PXE: true})
	}
	s.RecordTransfer(Transfer{Remote: netip.MustParseAddr("10.1.0.1"), File: "uki.efi", Protocol: "tftp"})
	m0, _ := s.Machine(macs[0])
	m1, _ := s.Machine(macs[1])
	if m0.State != Booting || m1.State != Accepted {
		t.Errorf("first transfer went to the wrong machine: %s %s", m0.State, m1.State)
	}
	// A learnt address wins over the queue.
	s.LearnAddress(mustMAC(t, macs[1]), netip.MustParseAddr("10.1.0.2"))
	s.RecordTransfer(Transfer{Remote: netip.MustParseAddr("10.1.0.2"), File: "uki.efi", Protocol: "http"})
	if m1, _ = s.Machine(macs[1]); m1.State != Booting {
		t.Errorf("learnt address not used: %s", m1.State)
	}
	// Unattributable transfers are still recorded.
	s.RecordTransfer(Transfer{Remote: netip.MustParseAddr("10.1.0.3"), File: "other.efi", Protocol: "tftp"})
	ev, _ := s.Events(0, 0)
	if last := ev[len(ev)-1]; last.MAC != "" || last.File != "other.efi" {
		t.Errorf("last event = %+v", last)
	}
}

func TestRules(t *testing.T) {
	rules := []Rule{
		{Name: "rack1", MACPrefix: "52:54:00:aa", Profile: "worker"},
		{Name: "range", MACFrom: "02:00:00:00:00:10", MACTo: "02:00:00:00:00:20"},
		{Name: "uuid", UUIDs: []string{"00112233445566778899AABBCCDDEEFF"}},
	}
	s := open(t, Options{Rules: rules})
	s.PutProfile(worker)
	uuid := []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	for _, tc := range []struct {
		mac  string
		uuid []byte
		by   string
	}{
		{"52:54:00:aa:00:01", nil, "rule:rack1"},
		{"52:54:00:ab:00:01", nil, ""},
		{"02:00:00:00:00:10", nil, "rule:range"},
		{"02:00:00:00:00:20", nil, "rule:range"},
		{"02:00:00:00:00:21", nil, ""},
		{"02:00:00:00:00:0f", nil, ""},
		{"02:00:00:00:99:99", uuid, "rule:uuid"},
		{"02:00:00:00:99:98", uuid[:15], ""},
	} {
		s.Boot(context.Background(), Request{MAC: mustMAC(t, tc.mac), UUID: tc.uuid, Arch: ArchX64UEFI, PXE: true})
		m, _ := s.Machine(tc.mac)
		if m.AcceptedBy != tc.by || (tc.by != "") != (m.State == Accepted) {
			t.Errorf("%s: accepted_by %q state %s, want %q", tc.mac, m.AcceptedBy, m.State, tc.by)
		}
	}
	if m, _ := s.Machine("52:54:00:aa:00:01"); m.Profile != "worker" {
		t.Errorf("rule profile not assigned: %q", m.Profile)
	}
	if m, _ := s.Machine("02:00:00:00:99:99"); m.UUID != "00112233-4455-6677-8899-aabbccddeeff" {
		t.Errorf("uuid = %q", m.UUID)
	}
}

func TestValidation(t *testing.T) {
	for _, tc := range []struct {
		p     Profile
		field string
	}{
		{Profile{Name: "../x", Image: "a", Platform: "tpm", Role: "worker"}, "name"},
		{Profile{Name: "x", Image: "a/b", Platform: "tpm", Role: "worker"}, "image"},
		{Profile{Name: "x", Image: "a", ImageARM64: "..", Platform: "tpm", Role: "worker"}, "image_arm64"},
		{Profile{Name: "x", Image: "a", Platform: "sgx", Role: "worker"}, "platform"},
		{Profile{Name: "x", Image: "a", Platform: "tdx", Role: "boss"}, "role"},
		{Profile{Name: "x", Image: "a", Platform: "tdx", Role: "worker", KeydHints: []string{"nope"}}, "keyd_hints[0]"},
	} {
		if err := tc.p.Validate(); !isField(err, tc.field) {
			t.Errorf("%+v: %v, want field %s", tc.p, err, tc.field)
		}
	}
	for _, tc := range []struct {
		r     Rule
		field string
	}{
		{Rule{MACPrefix: "52"}, "name"},
		{Rule{Name: "r"}, "mac_prefix"},
		{Rule{Name: "r", MACPrefix: "5:4"}, "mac_prefix"},
		{Rule{Name: "r", MACFrom: "02:00:00:00:00:01"}, "mac_to"},
		{Rule{Name: "r", MACFrom: "zz", MACTo: "02:00:00:00:00:01"}, "mac_from"},
		{Rule{Name: "r", MACFrom: "02:00:00:00:00:02", MACTo: "02:00:00:00:00:01"}, "mac_to"},
		{Rule{Name: "r", UUIDs: []string{"abc"}}, "uuids[0]"},
	} {
		if err := tc.r.Validate(); !isField(err, tc.field) {
			t.Errorf("%+v: %v, want field %s", tc.r, err, tc.field)
		}
	}
	if _, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{Rules: []Rule{{Name: "bad"}}}); err == nil || !strings.Contains(err.Error(), "rules[0]") {
		t.Errorf("Open with a bad rule: %v", err)
	}
}

func TestProfiles(t *testing.T) {
	s := open(t, Options{})
	if err := s.PutProfile(Profile{Name: "x"}); !isField(err, "image") {
		t.Errorf("bad profile: %v", err)
	}
	s.PutProfile(worker)
	s.Accept("52:54:00:00:00:05", "worker", "admin")
	if err := s.DeleteProfile("worker"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "52:54:00:00:00:05") {
		t.Errorf("delete profile in use: %v", err)
	}
	s.Forget("52:54:00:00:00:05")
	if err := s.DeleteProfile("worker"); err != nil {
		t.Error(err)
	}
	if err := s.DeleteProfile("worker"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete missing profile: %v", err)
	}
}

func TestEventCap(t *testing.T) {
	s := open(t, Options{MaxEventsPerMachine: 5})
	mac := mustMAC(t, "52:54:00:00:00:06")
	for range 20 {
		s.Boot(context.Background(), Request{MAC: mac, PXE: true})
	}
	tl, _ := s.Timeline(mac.String())
	all, _ := s.Events(0, 0)
	if len(tl) != 5 || len(all) != 5 {
		t.Errorf("timeline %d events, store %d; want 5 each", len(tl), len(all))
	}
	// A flood of unattributable transfers is capped as well (4 × the cap).
	for range 50 {
		s.RecordTransfer(Transfer{Remote: netip.MustParseAddr("10.9.9.9"), File: "junk", Protocol: "tftp"})
	}
	if all, _ = s.Events(0, 0); len(all) != 5+20 {
		t.Errorf("after a junk flood the store has %d events, want 25", len(all))
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := open(t, Options{Registerer: reg})
	s.Boot(context.Background(), Request{MAC: mustMAC(t, "52:54:00:00:00:07"), PXE: true})
	s.Accept("52:54:00:00:00:08", "", "admin")
	want := `
# HELP provisioner_inventory_machines Machines in the inventory, by state.
# TYPE provisioner_inventory_machines gauge
provisioner_inventory_machines{state="accepted"} 1
provisioner_inventory_machines{state="attested"} 0
provisioner_inventory_machines{state="booting"} 0
provisioner_inventory_machines{state="discovered"} 1
provisioner_inventory_machines{state="failed"} 0
provisioner_inventory_machines{state="joined"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "provisioner_inventory_machines"); err != nil {
		t.Error(err)
	}
	if n := testutil.ToFloat64(s.events.WithLabelValues("dhcp")); n != 1 {
		t.Errorf("dhcp events = %v", n)
	}
}

func TestConcurrentBoot(t *testing.T) {
	s := open(t, Options{Now: time.Now})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			mac := net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}
			if _, err := s.Boot(context.Background(), Request{MAC: mac, PXE: true, Arch: ArchX64UEFI}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ms, _ := s.Machines()
	if len(ms) != 200 {
		t.Errorf("%d machines, want 200", len(ms))
	}
}

func TestReopenAndSchema(t *testing.T) {
	file := filepath.Join(t.TempDir(), "inv.db")
	s, err := Open(file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Accept("52:54:00:00:00:09", "", "admin")
	s.Close()
	s, err = Open(file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.Machine("52:54:00:00:00:09"); err != nil || m.State != Accepted {
		t.Errorf("after reopen: %+v %v", m, err)
	}
	s.Close()
}

// TestCrashDurability kills a child process (SIGKILL) while it records
// machines; every Boot that returned before the kill must be on disk.
func TestCrashDurability(t *testing.T) {
	if os.Getenv("INVENTORY_CRASH_CHILD") != "" {
		s, err := Open(os.Getenv("INVENTORY_CRASH_CHILD"), Options{})
		if err != nil {
			os.Exit(2)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					mac := net.HardwareAddr{2, byte(w), 0, byte(i >> 16), byte(i >> 8), byte(i)}
					if _, err := s.Boot(context.Background(), Request{MAC: mac, PXE: true}); err != nil {
						os.Exit(3)
					}
					mu.Lock()
					os.Stdout.WriteString(mac.String() + "\n")
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	file := filepath.Join(t.TempDir(), "inv.db")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashDurability$")
	cmd.Env = append(os.Environ(), "INVENTORY_CRASH_CHILD="+file)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	buf := make([]byte, 0, 1<<16)
	tmp := make([]byte, 4096)
	for len(acked) < 300 {
		n, err := out.Read(tmp)
		if err != nil {
			break
		}
		buf = append(buf, tmp[:n]...)
		lines := strings.Split(string(buf), "\n")
		acked = lines[:len(lines)-1]
	}
	cmd.Process.Kill()
	cmd.Wait()
	if len(acked) < 300 {
		t.Fatalf("child acknowledged only %d machines", len(acked))
	}
	s, err := Open(file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, mac := range acked {
		if _, err := s.Machine(mac); err != nil {
			t.Errorf("acknowledged machine %s lost after kill -9: %v", mac, err)
		}
	}
}

// BenchmarkBootParallel measures recording DHCP requests from many machines
// at once, with fsync: the group committer's throughput.
func BenchmarkBootParallel(b *testing.B) {
	s := open(b, Options{Now: time.Now, DefaultProfile: "worker"})
	s.PutProfile(worker)
	var n atomic.Uint32
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			mac := net.HardwareAddr{2, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
			if _, err := s.Boot(context.Background(), Request{MAC: mac, PXE: true, Arch: ArchX64UEFI}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
