package inventory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	initapi "github.com/palisade-cc/palisade/initramfs/api"
)

func TestHintText(t *testing.T) {
	for _, tc := range []struct {
		keyd    []string
		cluster string
		want    string
	}{
		{nil, "", ""},
		{[]string{"10.0.0.2:7443"}, "", "keyd=10.0.0.2:7443"},
		{nil, "c1", "cluster=c1"},
		{[]string{"10.0.0.2:7443", "[fd00::2]:7443", "keyd-1.rack.example:7443"}, "prod.eu-1_a",
			"keyd=10.0.0.2:7443,[fd00::2]:7443,keyd-1.rack.example:7443 cluster=prod.eu-1_a"},
	} {
		p := Profile{Name: "p", Image: "u.efi", Platform: "tpm", Role: "worker", KeydHints: tc.keyd, Cluster: tc.cluster}
		if err := p.Validate(); err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		got := p.HintText()
		if got != tc.want {
			t.Errorf("HintText(%v, %q) = %q, want %q", tc.keyd, tc.cluster, got, tc.want)
		}
		if got == "" {
			continue
		}
		// The node's init must read back exactly what the profile says.
		h, err := initapi.ParseDHCPOption([]byte(got))
		if err != nil {
			t.Errorf("init refuses %q: %v", got, err)
			continue
		}
		if d := cmp.Diff(tc.keyd, h.Keyd); d != "" || h.Cluster != tc.cluster {
			t.Errorf("init read %q as keyd %v cluster %q (-want +got keyd):\n%s", got, h.Keyd, h.Cluster, d)
		}
	}
}

// TestHintsValidation: every profile Validate accepts yields text the init
// parses; each rule of the init's is enforced at profile set time, so a bad
// value is refused there rather than silently costing the node its hints.
func TestHintsValidation(t *testing.T) {
	base := Profile{Name: "p", Image: "u.efi", Platform: "tpm", Role: "worker",
		KeydHints: []string{"10.0.0.2:7443"}, Cluster: "c1"}
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	sixteen := make([]string, MaxKeydHints)
	for i := range sixteen {
		sixteen[i] = fmt.Sprintf("10.0.0.%d:7443", i+1)
	}
	long := make([]string, MaxKeydHints)
	for i := range long {
		long[i] = fmt.Sprintf("keyd-%02d.%s.example:7443", i, strings.Repeat("x", 40))
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Profile)
		field string // "" = valid
	}{
		{"16 addresses", func(p *Profile) { p.KeydHints = sixteen }, ""},
		{"17 addresses", func(p *Profile) { p.KeydHints = append(sixteen, "10.0.1.1:7443") }, "keyd_hints"},
		{"cluster 64", func(p *Profile) { p.Cluster = strings.Repeat("a", 64) }, ""},
		{"cluster 65", func(p *Profile) { p.Cluster = strings.Repeat("a", 65) }, "cluster"},
		{"cluster space", func(p *Profile) { p.Cluster = "c 1" }, "cluster"},
		{"cluster slash", func(p *Profile) { p.Cluster = "c/1" }, "cluster"},
		{"cluster equals", func(p *Profile) { p.Cluster = "c=1" }, "cluster"},
		{"cluster unicode", func(p *Profile) { p.Cluster = "clüster" }, "cluster"},
		{"no cluster", func(p *Profile) { p.Cluster = "" }, ""},
		{"port 0", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:0"} }, "keyd_hints[0]"},
		{"port 65536", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:65536"} }, "keyd_hints[0]"},
		{"port name", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:https"} }, "keyd_hints[0]"},
		{"port +1", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:+1"} }, "keyd_hints[0]"},
		{"no port", func(p *Profile) { p.KeydHints = []string{"10.0.0.2"} }, "keyd_hints[0]"},
		{"empty host", func(p *Profile) { p.KeydHints = []string{":7443"} }, "keyd_hints[0]"},
		{"comma", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:7443,10.0.0.3:7443"} }, "keyd_hints[0]"},
		{"space", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:7443 cluster=evil"} }, "keyd_hints[0]"},
		{"equals", func(p *Profile) { p.KeydHints = []string{"a=b:7443"} }, "keyd_hints[0]"},
		// An IPv6 zone is free text to netip; the option's separators
		// must not get through it.
		{"zone", func(p *Profile) { p.KeydHints = []string{"[fe80::1%eth0]:7443"} }, ""},
		{"zone space", func(p *Profile) { p.KeydHints = []string{"[fe80::1%a cluster]:7443"} }, "keyd_hints[0]"},
		{"zone comma", func(p *Profile) { p.KeydHints = []string{"[fe80::1%a,b]:7443"} }, "keyd_hints[0]"},
		{"zone equals", func(p *Profile) { p.KeydHints = []string{"[fe80::1%a=b]:7443"} }, "keyd_hints[0]"},
		{"zone non-ascii", func(p *Profile) { p.KeydHints = []string{"[fe80::1%é]:7443"} }, "keyd_hints[0]"},
		{"bad dns label", func(p *Profile) { p.KeydHints = []string{"-keyd.example:7443"} }, "keyd_hints[0]"},
		{"second bad", func(p *Profile) { p.KeydHints = []string{"10.0.0.2:7443", "x_y:1"} }, "keyd_hints[1]"},
		{"ipv6", func(p *Profile) { p.KeydHints = []string{"[fd00::1]:7443"} }, ""},
		{"dns", func(p *Profile) { p.KeydHints = []string{"keyd.rack.example.:7443"} }, ""},
		{"too long", func(p *Profile) { p.KeydHints = long; p.Cluster = strings.Repeat("c", 64) }, "keyd_hints"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base
			p.KeydHints = append([]string(nil), base.KeydHints...)
			tc.edit(&p)
			err := p.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if _, err := initapi.ParseDHCPOption([]byte(p.HintText())); err != nil {
					t.Errorf("accepted profile, but the init refuses %q: %v", p.HintText(), err)
				}
				return
			}
			if !isField(err, tc.field) {
				t.Errorf("got %v, want an error on field %s", err, tc.field)
			}
		})
	}
	// Text longer than one option (255 bytes) is allowed up to MaxHintText:
	// the DHCP server splits it (RFC 3396).
	p := base
	p.KeydHints = long[:8]
	if err := p.Validate(); err != nil || len(p.HintText()) <= 255 {
		t.Errorf("%d bytes of hints: %v; want valid and over 255 bytes", len(p.HintText()), err)
	}
}

// TestBootHints: hints go to accepted machines only, from their profile or
// the default profile, on every request, network boot or not.
func TestBootHints(t *testing.T) {
	s := open(t, Options{DefaultProfile: "worker", DiscoveryProfile: "discovery"})
	cp := Profile{Name: "cp", Image: "cp.efi", Platform: "sev-snp", Role: "control-plane", Cluster: "prod"}
	bare := Profile{Name: "bare", Image: "b.efi", Platform: "tpm", Role: "worker"}
	disc := Profile{Name: "discovery", Image: "d.efi", Platform: "tpm", Role: "worker", KeydHints: []string{"10.9.9.9:1"}, Cluster: "lab"}
	for _, p := range []Profile{worker, cp, bare, disc} {
		if err := s.PutProfile(p); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	boot := func(mac string, req Request) Answer {
		t.Helper()
		req.MAC = mustMAC(t, mac)
		a, err := s.Boot(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	pxe := Request{Arch: ArchX64UEFI, PXE: true, VendorClass: "PXEClient", MessageType: "DISCOVER"}
	// The booted OS: no PXEClient, no HTTPClient, no iPXE.
	osReq := Request{VendorClass: "", MessageType: "REQUEST"}

	const m1, m2, m3, m4 = "52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03", "52:54:00:00:01:04"
	// Discovered: the discovery profile's image, but no hints.
	if a := boot(m1, pxe); a.Hints != "" || a.TFTPFile != "d.efi" {
		t.Errorf("discovered machine: %+v; want the discovery image and no hints", a)
	}
	if a := boot(m1, osReq); a != (Answer{}) {
		t.Errorf("discovered machine's OS: %+v; want nothing", a)
	}
	// Accepted without a profile: the default profile's hints.
	if _, err := s.Accept(m1, "", "test"); err != nil {
		t.Fatal(err)
	}
	if a := boot(m1, pxe); a != (Answer{TFTPFile: "uki.efi", Hints: "keyd=10.0.0.1:7443"}) {
		t.Errorf("accepted, default profile, PXE: %+v", a)
	}
	if a := boot(m1, osReq); a != (Answer{Hints: "keyd=10.0.0.1:7443"}) {
		t.Errorf("accepted, default profile, OS DHCP: %+v", a)
	}
	// Its own profile wins; a cluster alone is a hint too.
	if _, err := s.Accept(m2, "cp", "test"); err != nil {
		t.Fatal(err)
	}
	if a := boot(m2, osReq); a != (Answer{Hints: "cluster=prod"}) {
		t.Errorf("accepted, profile cp, OS DHCP: %+v", a)
	}
	// A profile without hints: none.
	if _, err := s.Accept(m3, "bare", "test"); err != nil {
		t.Fatal(err)
	}
	if a := boot(m3, osReq); a != (Answer{}) {
		t.Errorf("profile without hints: %+v", a)
	}
	// Later states still get them (a rebooting joined node asks again).
	if _, err := s.Report(m2, Joined, ""); err != nil {
		t.Fatal(err)
	}
	if a := boot(m2, osReq); a.Hints != "cluster=prod" {
		t.Errorf("joined machine: %+v", a)
	}
	// A profile stored by an older, laxer build: no hints rather than text
	// the init would refuse whole.
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bProfiles).Put([]byte("cp"), []byte(`{"name":"cp","image":"cp.efi","platform":"sev-snp","role":"control-plane","keyd_hints":["10.0.0.2:0"],"cluster":"prod"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if a := boot(m2, osReq); a != (Answer{}) {
		t.Errorf("stale invalid profile: %+v; want no hints", a)
	}
	// No default profile and none assigned: nothing.
	s2 := open(t, Options{})
	if err := s2.PutProfile(worker); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Accept(m4, "", "test"); err != nil {
		t.Fatal(err)
	}
	if a, err := s2.Boot(ctx, Request{MAC: mustMAC(t, m4), MessageType: "REQUEST"}); err != nil || a != (Answer{}) {
		t.Errorf("accepted without any profile: %+v, %v", a, err)
	}
}

// FuzzProfileHints: whatever profile Validate accepts, the init parses its
// hint text back to the same addresses and cluster, and the text is within
// the bound the DHCP server can send.
func FuzzProfileHints(f *testing.F) {
	f.Add("10.0.0.2:7443", "[fe80::1%eth0]:1", "c1")
	f.Add("keyd.example:65535", "", "")
	f.Add("a:1,b:2", "x y:3", "c=1")
	f.Fuzz(func(t *testing.T, k1, k2, cluster string) {
		p := Profile{Name: "p", Image: "u.efi", Platform: "tpm", Role: "worker", Cluster: cluster}
		for _, k := range []string{k1, k2} {
			if k != "" {
				p.KeydHints = append(p.KeydHints, k)
			}
		}
		if p.Validate() != nil {
			return
		}
		text := p.HintText()
		if len(text) > MaxHintText {
			t.Fatalf("valid profile yields %d bytes of hints", len(text))
		}
		h, err := initapi.ParseDHCPOption([]byte(text))
		if err != nil {
			t.Fatalf("valid profile %+v: init refuses %q: %v", p, text, err)
		}
		if !slices.Equal(h.Keyd, p.KeydHints) || h.Cluster != p.Cluster {
			t.Fatalf("init read %q as keyd %q cluster %q", text, h.Keyd, h.Cluster)
		}
	})
}
