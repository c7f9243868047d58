package inventory

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	initapi "github.com/palisade-cc/palisade/initramfs/api"
)

// nodeWorld: machine a accepted with lease 10.0.0.10, machine b accepted
// with lease 10.0.0.11, machine d discovered with lease 10.0.0.12.
func nodeWorld(t *testing.T) (*Store, map[string]netip.Addr) {
	t.Helper()
	s := open(t, Options{DefaultProfile: "worker"})
	if err := s.PutProfile(worker); err != nil {
		t.Fatal(err)
	}
	ips := map[string]netip.Addr{}
	for i, mac := range []string{"52:54:00:00:0a:01", "52:54:00:00:0a:02", "52:54:00:00:0a:03"} {
		m := mustMAC(t, mac)
		if _, err := s.Boot(context.Background(), Request{MAC: m, Arch: ArchX64UEFI, PXE: true, MessageType: "request"}); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if _, err := s.Accept(mac, "", "test"); err != nil {
				t.Fatal(err)
			}
		}
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)})
		s.LearnAddress(m, ip)
		ips[mac] = ip
	}
	return s, ips
}

func TestNodeStatus(t *testing.T) {
	s, ips := nodeWorld(t)
	a, b := "52:54:00:00:0a:01", "52:54:00:00:0a:02"
	rep := func(mac string, st NodeState, class, detail string) (Machine, error) {
		return s.NodeStatus(ips[mac], NodeReport{State: st, Class: class, Detail: detail})
	}
	state := func(mac string) State {
		m, err := s.Machine(mac)
		if err != nil {
			t.Fatal(err)
		}
		return m.State
	}
	for _, step := range []struct {
		st    NodeState
		class string
		want  State
	}{
		{NodeBooting, "", Accepted}, // event only
		{NodeAttested, "", Attested},
		{NodeUnlocked, "", Attested},
		{NodeFailed, "disk-header", Failed},
		{NodeBooting, "", Failed},
		{NodeUnlocked, "", Attested}, // a later boot that got through
	} {
		m, err := rep(a, step.st, step.class, "d")
		if err != nil || m.State != step.want || state(a) != step.want {
			t.Fatalf("report %s: machine %s (stored %s), %v; want %s", step.st, m.State, state(a), err, step.want)
		}
	}
	// Only a's timeline moved: b was not spoken for.
	if state(b) != Accepted {
		t.Errorf("b is %s after a's reports, want accepted", state(b))
	}
	tl, err := s.Timeline(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tl {
		if e.Kind == EventNodeStatus {
			t.Errorf("b's timeline has a's report: %+v", e)
		}
	}
	tl, err = s.Timeline(a)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range tl {
		if e.Kind == EventNodeStatus {
			if e.Remote != "10.0.0.10" {
				t.Errorf("event remote %q, want the source address", e.Remote)
			}
			got = append(got, e.Detail+"→"+string(e.State))
		}
	}
	want := []string{"booting: d→", "attested: d→attested", "unlocked: d→attested", "failed (disk-header): d→failed",
		"booting: d→", "unlocked: d→attested"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("a's node-status events (-want +got):\n%s", d)
	}

	// A joined machine (the cluster said so) is not moved back by its own
	// attested/unlocked, but a failure is news.
	if _, err := s.Report(b, Joined, ""); err != nil {
		t.Fatal(err)
	}
	for _, st := range []NodeState{NodeAttested, NodeUnlocked, NodeBooting} {
		if m, err := rep(b, st, "", ""); err != nil || m.State != Joined {
			t.Errorf("joined machine reports %s: %s, %v; want joined", st, m.State, err)
		}
	}
	if m, _ := rep(b, NodeFailed, "deadline", ""); m.State != Failed {
		t.Errorf("joined machine reports failed: %s", m.State)
	}
}

func TestNodeStatusUnknownSource(t *testing.T) {
	s, ips := nodeWorld(t)
	ok := NodeReport{State: NodeAttested}
	for name, ip := range map[string]netip.Addr{
		"no lease":              netip.MustParseAddr("10.0.0.99"),
		"discovered machine":    ips["52:54:00:00:0a:03"],
		"invalid address":       {},
		"v6 address, v4 leases": netip.MustParseAddr("fd00::10"),
	} {
		if _, err := s.NodeStatus(ip, ok); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want not found", name, err)
		}
	}
	// The same address as an IPv4-mapped IPv6 source is the machine.
	if _, err := s.NodeStatus(netip.AddrFrom16(ips["52:54:00:00:0a:01"].As16()), ok); err != nil {
		t.Errorf("v4-mapped source: %v", err)
	}
	// A transfer from an unleased address (a guess, as in proxy mode) does
	// not make it a known source.
	a, _ := s.Boot(context.Background(), Request{MAC: mustMAC(t, "52:54:00:00:0a:02"), Arch: ArchX64UEFI, PXE: true})
	guess := netip.MustParseAddr("10.9.9.9")
	if err := s.RecordTransfer(Transfer{Remote: guess, File: a.TFTPFile, Bytes: 1, Protocol: "tftp"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NodeStatus(guess, ok); !errors.Is(err, ErrNotFound) {
		t.Errorf("guessed address: %v, want not found", err)
	}
	// A forgotten machine's lease no longer speaks for anything.
	if err := s.Forget("52:54:00:00:0a:01"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NodeStatus(ips["52:54:00:00:0a:01"], ok); !errors.Is(err, ErrNotFound) {
		t.Errorf("forgotten machine: %v, want not found", err)
	}
}

func TestNodeReportValidate(t *testing.T) {
	good := NodeReport{State: NodeFailed, Class: "disk-header", Detail: strings.Repeat("é", MaxNodeDetail)}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid report: %v", err)
	}
	for _, tc := range []struct {
		edit  func(*NodeReport)
		field string
	}{
		{func(r *NodeReport) { r.State = "joined" }, "state"},
		{func(r *NodeReport) { r.State = "" }, "state"},
		{func(r *NodeReport) { r.Class = "a b" }, "class"},
		{func(r *NodeReport) { r.Class = strings.Repeat("c", MaxNodeClass+1) }, "class"},
		{func(r *NodeReport) { r.State = NodeAttested }, "class"},
		{func(r *NodeReport) { r.Detail += "x" }, "detail"},
		{func(r *NodeReport) { r.Detail = "line\nforged line" }, "detail"},
		{func(r *NodeReport) { r.Detail = "\xff" }, "detail"},
	} {
		r := good
		tc.edit(&r)
		if err := r.Validate(); !isField(err, tc.field) {
			t.Errorf("%+v: %v, want a field error on %s", r, err, tc.field)
		}
	}
	s, ips := nodeWorld(t)
	bad := good
	bad.State = "joined"
	if _, err := s.NodeStatus(ips["52:54:00:00:0a:01"], bad); !isField(err, "state") {
		t.Errorf("NodeStatus with a bad state: %v", err)
	}
}

// The status hint rides with the other hints, parses with the init's
// parser, and never displaces them.
func TestStatusHint(t *testing.T) {
	const url = "http://10.0.0.1:8080"
	s := open(t, Options{DefaultProfile: "worker", StatusURL: url})
	s.PutProfile(worker)
	mac := mustMAC(t, "52:54:00:00:0b:01")
	ans, _ := s.Boot(context.Background(), Request{MAC: mac, MessageType: "discover"})
	if ans.Hints != "" {
		t.Errorf("discovered machine got hints %q", ans.Hints)
	}
	s.Accept(mac.String(), "", "test")
	ans, err := s.Boot(context.Background(), Request{MAC: mac, MessageType: "request"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := initapi.ParseDHCPOption([]byte(ans.Hints))
	if err != nil || h.Status != url || len(h.Keyd) != 1 {
		t.Errorf("hints %q read as %+v, %v; want status %s and the keyd hint", ans.Hints, h, err, url)
	}
	// A profile whose hints fill the option keeps them; status is dropped.
	long := worker
	long.Name, long.KeydHints = "long", nil
	for i := range MaxKeydHints {
		long.KeydHints = append(long.KeydHints, strings.Repeat("k", 36)+".example:"+string(rune('1'+i%9)))
	}
	if err := long.Validate(); err != nil {
		t.Fatal(err)
	}
	s.PutProfile(long)
	s.Assign(mac.String(), "long")
	ans, _ = s.Boot(context.Background(), Request{MAC: mac, MessageType: "request"})
	if ans.Hints != long.HintText() {
		t.Errorf("long profile: hints %q, want the profile's own text", ans.Hints)
	}
	for _, bad := range []string{"https://h:1", "http://h", "http://u@h:1", "http://h:1/x"} {
		if _, err := Open(t.TempDir()+"/x.db", Options{StatusURL: bad}); err == nil {
			t.Errorf("Open with status URL %q: no error", bad)
		}
	}
}

func TestStatusURL(t *testing.T) {
	for _, tc := range []struct {
		bound, base, want string
	}{
		{"10.0.0.1:8080", "", "http://10.0.0.1:8080"},
		{"10.0.0.1:8080", "http://elsewhere:1/images", "http://10.0.0.1:8080"},
		{"0.0.0.0:8080", "http://10.0.0.1:8080/images", "http://10.0.0.1:8080"},
		{"[::]:8080", "http://boot.rack.example/images", "http://boot.rack.example:8080"},
		{"[::]:8080", "https://boot.rack.example/images", ""},
		{"0.0.0.0:8080", "", ""},
		{"[fd00::1]:80", "", "http://[fd00::1]:80"},
	} {
		got := StatusURL(netip.MustParseAddrPort(tc.bound), tc.base)
		if got != tc.want {
			t.Errorf("StatusURL(%s, %q) = %q, want %q", tc.bound, tc.base, got, tc.want)
		}
		if got != "" {
			if err := initapi.CheckStatusURL(got); err != nil {
				t.Errorf("the init refuses %q: %v", got, err)
			}
		}
	}
}
