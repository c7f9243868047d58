package dhcp

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var testUUID = []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

func withArch(a uint16) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptClientArch(iana.Arch(a)))
}

func withVendor(v string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptClassIdentifier(v))
}

func withUUID() dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, testUUID...)))
}

func withUserClass(raw string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte(raw)))
}

func proxyConfig() Config {
	return Config{Mode: ModeProxy, Listen: serverIP + ":67"}
}

func TestClientParsing(t *testing.T) {
	p := &recordingPolicy{}
	h := newHarness(t, authConfig(t), p)
	for _, tc := range []struct {
		name string
		mods []dhcpv4.Modifier
		want Client
	}{
		{"bios pxe", []dhcpv4.Modifier{withArch(0), withVendor("PXEClient:Arch:00000:UNDI:002001"), withUUID()},
			Client{Arch: 0, VendorClass: "PXEClient:Arch:00000:UNDI:002001", PXE: true, UUID: testUUID}},
		{"x64 uefi", []dhcpv4.Modifier{withArch(7), withVendor("PXEClient:Arch:00007:UNDI:003016")},
			Client{Arch: 7, VendorClass: "PXEClient:Arch:00007:UNDI:003016", PXE: true}},
		{"x64 uefi (9)", []dhcpv4.Modifier{withArch(9), withVendor("PXEClient:Arch:00009")},
			Client{Arch: 9, VendorClass: "PXEClient:Arch:00009", PXE: true}},
		{"arm64 uefi", []dhcpv4.Modifier{withArch(11), withVendor("PXEClient:Arch:00011")},
			Client{Arch: 11, VendorClass: "PXEClient:Arch:00011", PXE: true}},
		{"x64 http", []dhcpv4.Modifier{withArch(16), withVendor("HTTPClient:Arch:00016:UNDI:003001")},
			Client{Arch: 16, VendorClass: "HTTPClient:Arch:00016:UNDI:003001", HTTPBoot: true}},
		{"arm64 http", []dhcpv4.Modifier{withArch(19), withVendor("HTTPClient:Arch:00019")},
			Client{Arch: 19, VendorClass: "HTTPClient:Arch:00019", HTTPBoot: true}},
		{"ipxe bare user class", []dhcpv4.Modifier{withArch(7), withVendor("PXEClient"), withUserClass("iPXE")},
			Client{Arch: 7, VendorClass: "PXEClient", PXE: true, UserClass: "iPXE"}},
		{"rfc 3004 user classes", []dhcpv4.Modifier{withUserClass("\x04iPXE\x03abc")},
			Client{UserClass: "iPXE,abc"}},
		{"plain client", nil, Client{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mac := "02:00:00:00:01:01"
			h.relayed(msg(t, dhcpv4.MessageTypeDiscover, mac, tc.mods...))
			want := tc.want
			want.MAC, _ = net.ParseMAC(mac)
			want.Relay = net.ParseIP(relayIP).To4()
			want.MessageType = "DISCOVER"
			if d := cmp.Diff(want, p.last()); d != "" {
				t.Errorf("Client (-want +got):\n%s", d)
			}
		})
	}
}

func TestBootAnswers(t *testing.T) {
	p := &recordingPolicy{boots: map[string]Boot{
		"02:00:00:00:00:07": {TFTPFile: "uefi/x64/palisade.efi"},
		"02:00:00:00:00:10": {HTTPURL: "http://10.0.0.254:8080/palisade.efi", TFTPFile: "uefi/x64/ipxe.efi"},
		"02:00:00:00:00:11": {TFTPFile: "arm64.efi", ServerIP: net.ParseIP("10.0.0.77")},
	}}
	h := newHarness(t, authConfig(t), p)
	type answer struct {
		Siaddr, File, Opt66, Opt67, Opt60, Opt43 string
	}
	get := func(r *dhcpv4.DHCPv4) answer {
		return answer{r.ServerIPAddr.String(), r.BootFileName, r.TFTPServerName(), r.BootFileNameOption(), r.ClassIdentifier(),
			string(r.Options.Get(dhcpv4.OptionVendorSpecificInformation))}
	}
	const pxeVendor = "\x06\x01\x08\xff"
	for _, tc := range []struct {
		name string
		mac  string
		mods []dhcpv4.Modifier
		want answer
	}{
		{"pxe x64", "02:00:00:00:00:07", []dhcpv4.Modifier{withArch(7), withVendor("PXEClient:Arch:00007")},
			answer{serverIP, "uefi/x64/palisade.efi", serverIP, "uefi/x64/palisade.efi", "PXEClient", pxeVendor}},
		{"http boot gets the URL", "02:00:00:00:00:10", []dhcpv4.Modifier{withArch(16), withVendor("HTTPClient:Arch:00016")},
			answer{serverIP, "http://10.0.0.254:8080/palisade.efi", "", "http://10.0.0.254:8080/palisade.efi", "HTTPClient", ""}},
		{"pxe firmware gets the tftp file", "02:00:00:00:00:10", []dhcpv4.Modifier{withArch(7), withVendor("PXEClient:Arch:00007")},
			answer{serverIP, "uefi/x64/ipxe.efi", serverIP, "uefi/x64/ipxe.efi", "PXEClient", pxeVendor}},
		{"ipxe chainloaded gets the URL", "02:00:00:00:00:10", []dhcpv4.Modifier{withArch(7), withVendor("PXEClient:Arch:00007"), withUserClass("iPXE")},
			answer{serverIP, "http://10.0.0.254:8080/palisade.efi", "", "http://10.0.0.254:8080/palisade.efi", "", ""}},
		{"next-server from policy", "02:00:00:00:00:11", []dhcpv4.Modifier{withArch(11), withVendor("PXEClient:Arch:00011")},
			answer{"10.0.0.77", "arm64.efi", "10.0.0.77", "arm64.efi", "PXEClient", pxeVendor}},
		{"unaccepted: address only", "02:00:00:00:00:99", []dhcpv4.Modifier{withArch(7), withVendor("PXEClient")},
			answer{"0.0.0.0", "", "", "", "", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ack := h.dora(tc.mac, tc.mods...)
			if d := cmp.Diff(tc.want, get(ack)); d != "" {
				t.Errorf("boot answer (-want +got):\n%s", d)
			}
			if ack.YourIPAddr.IsUnspecified() {
				t.Error("authoritative ACK without an address")
			}
		})
	}
	// A name too long for the file field goes in option 67 only.
	long := "http://10.0.0.254:8080/" + strings.Repeat("x", 120) + ".efi"
	p.boots["02:00:00:00:00:12"] = Boot{HTTPURL: long}
	ack := h.dora("02:00:00:00:00:12", withArch(16), withVendor("HTTPClient"))
	if ack.BootFileName != "" || ack.BootFileNameOption() != long {
		t.Errorf("long URL: file field %q, option 67 %q", ack.BootFileName, ack.BootFileNameOption())
	}
	// A failing policy costs the boot answer, not the address.
	p.fail = errors.New("inventory down")
	if ack := h.dora("02:00:00:00:00:07", withVendor("PXEClient")); ack.BootFileName != "" {
		t.Errorf("boot file %q sent although the policy failed", ack.BootFileName)
	}
}

func TestProxyMode(t *testing.T) {
	p := &recordingPolicy{boots: map[string]Boot{
		"02:00:00:00:00:07": {TFTPFile: "uefi/x64/palisade.efi"},
		"02:00:00:00:00:10": {HTTPURL: "http://10.0.0.254:8080/palisade.efi"},
	}}
	h := newHarness(t, proxyConfig(), p)

	offer, dst := h.do(h.local, msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:07", withArch(7), withVendor("PXEClient:Arch:00007"), withUUID()), "0.0.0.0:68")
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("proxy DISCOVER from a PXE client: got %v, want OFFER", offer)
	}
	if !offer.YourIPAddr.IsUnspecified() {
		t.Errorf("proxyDHCP offered address %v", offer.YourIPAddr)
	}
	if dst != netip.MustParseAddrPort("255.255.255.255:68") {
		t.Errorf("proxy OFFER sent to %v, want broadcast", dst)
	}
	got := map[string]string{
		"siaddr": offer.ServerIPAddr.String(), "file": offer.BootFileName, "opt60": offer.ClassIdentifier(),
		"opt54": offer.ServerIdentifier().String(),
		"opt43": string(offer.Options.Get(dhcpv4.OptionVendorSpecificInformation)),
		"opt97": string(offer.Options.Get(dhcpv4.OptionClientMachineIdentifier)),
	}
	want := map[string]string{
		"siaddr": serverIP, "file": "uefi/x64/palisade.efi", "opt60": "PXEClient", "opt54": serverIP,
		"opt43": "\x06\x01\x08\xff", "opt97": string(append([]byte{0}, testUUID...)),
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("proxy OFFER (-want +got):\n%s", d)
	}

	// Port 4011: REQUEST answered with an ACK, unicast to the client.
	ack, dst := h.do(h.pxe, msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:07", withArch(7), withVendor("PXEClient:Arch:00007"),
		dhcpv4.WithClientIP(net.ParseIP("10.0.0.150"))), "10.0.0.150:68")
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || ack.BootFileName != "uefi/x64/palisade.efi" {
		t.Fatalf("proxy REQUEST on 4011: got %v, want ACK with boot file", ack)
	}
	if dst != netip.MustParseAddrPort("10.0.0.150:68") {
		t.Errorf("4011 ACK sent to %v, want the client", dst)
	}
	// The address the client reported is the one its transfers come from.
	if d := cmp.Diff(map[string]netip.Addr{"02:00:00:00:00:07": netip.MustParseAddr("10.0.0.150")}, p.leased(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("leases heard in proxy mode (-want +got):\n%s", d)
	}

	// HTTP boot client through the proxy.
	hb, _ := h.do(h.local, msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:10", withArch(16), withVendor("HTTPClient:Arch:00016")), "0.0.0.0:68")
	if hb == nil || hb.BootFileName != "http://10.0.0.254:8080/palisade.efi" || hb.ClassIdentifier() != "HTTPClient" {
		t.Errorf("proxy HTTP boot offer: %v", hb)
	}

	for name, m := range map[string]*dhcpv4.DHCPv4{
		"not a PXE client":   msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:07"),
		"unaccepted machine": msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:55", withArch(7), withVendor("PXEClient")),
		"REQUEST on 67":      msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:07", withVendor("PXEClient")),
	} {
		if r, _ := h.do(h.local, m, "0.0.0.0:68"); r != nil {
			t.Errorf("%s: proxy answered %v", name, r)
		}
	}
	if got := testutil.ToFloat64(h.s.met.packets.WithLabelValues("discover", resultIgnored)); got != 2 {
		t.Errorf("ignored DISCOVERs = %v, want 2", got)
	}
}

func TestBadPackets(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	good := msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:01").ToBytes()
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	flood := edit(func(b []byte) []byte {
		b = b[:240]
		for i := 0; i < 200; i++ {
			b = append(b, 224, 1, byte(i))
		}
		return append(b, 53, 1, 1, 255)
	})
	for _, tc := range []struct {
		reason string
		b      []byte
	}{
		{badTruncated, good[:100]},
		{badTruncated, nil},
		{badOversized, append(append([]byte(nil), good...), make([]byte, maxPacket)...)},
		{badWrongOp, edit(func(b []byte) []byte { b[0] = 2; return b })},
		{badHWAddr, edit(func(b []byte) []byte { b[2] = 17; return b })},
		{badHWAddr, edit(func(b []byte) []byte { b[2] = 0; return b })},
		{badMalformed, edit(func(b []byte) []byte { b[236] = 0; return b })},
		{badMalformed, edit(func(b []byte) []byte { return append(b[:240], 53, 200) })},
		{badMalformed, edit(func(b []byte) []byte { return append(b[:240], 53, 1, 1) })},
		{badOptionFlood, flood},
		{badNoType, edit(func(b []byte) []byte { return append(b[:240], 255) })},
		{badUnknownType, edit(func(b []byte) []byte { return append(b[:240], 53, 1, 200, 255) })},
		{badUnexpected, edit(func(b []byte) []byte { return append(b[:240], 53, 1, byte(dhcpv4.MessageTypeAck), 255) })},
	} {
		before := testutil.ToFloat64(h.s.met.bad.WithLabelValues(tc.reason))
		h.s.handle(t.Context(), h.relay, tc.b, netip.MustParseAddrPort(relayIP+":67"))
		h.barrier()
		if got := testutil.ToFloat64(h.s.met.bad.WithLabelValues(tc.reason)) - before; got != 1 {
			t.Errorf("%s: counted %v times, want 1", tc.reason, got)
		}
		select {
		case out := <-h.relay.conn.(*fakeConn).out:
			t.Errorf("%s: answered to %v", tc.reason, out.dst)
		default:
		}
	}
}

func TestUserClass(t *testing.T) {
	for in, want := range map[string]string{
		"":               "",
		"iPXE":           "iPXE",
		"\x04iPXE":       "iPXE",
		"\x01a\x02bc":    "a,bc",
		"\x05ab":         "\x05ab",
		"\x00":           "\x00",
		"\x02ab\x00":     "\x02ab\x00",
		"\x03abc\x04def": "\x03abc\x04def",
	} {
		if got := userClass([]byte(in)); got != want {
			t.Errorf("userClass(%q) = %q, want %q", in, got, want)
		}
	}
}

// An authoritative server tells the policy every address it acknowledged,
// and none it only offered, so transfers are attributed exactly.
func TestLeaseObserver(t *testing.T) {
	p := &recordingPolicy{boots: map[string]Boot{}}
	h := newHarness(t, authConfig(t), p)
	if offer := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:21")); offer == nil {
		t.Fatal("no OFFER")
	}
	if got := p.leased(); len(got) != 0 {
		t.Fatalf("an OFFER was reported as a lease: %v", got)
	}
	ack := h.dora("02:00:00:00:00:22")
	want := map[string]netip.Addr{"02:00:00:00:00:22": netip.MustParseAddr(ack.YourIPAddr.String())}
	if d := cmp.Diff(want, p.leased(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("leases heard (-want +got):\n%s", d)
	}
}
