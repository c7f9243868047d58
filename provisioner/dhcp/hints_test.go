package dhcp

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testHints = "keyd=10.0.0.2:7443,10.0.0.3:7443 cluster=c1"

// askHints is what the node's init sends (initramfs/boot): option 224 in
// the parameter request list, next to what u-root's dhclient asks for, and
// nclient4's maximum message size.
func askHints() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
			dhcpv4.GenericOptionCode(OptionHints)),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1500)),
	}
}

// rawReply hands m to the handler and returns the reply's bytes, nil if
// none, so tests can see how options are laid out on the wire.
func (h *harness) rawReply(l *listener, m *dhcpv4.DHCPv4, peer string) []byte {
	h.t.Helper()
	h.s.handle(context.Background(), l, m.ToBytes(), netip.MustParseAddrPort(peer))
	h.barrier()
	select {
	case out := <-l.conn.(*fakeConn).out:
		return out.b
	default:
		return nil
	}
}

// optionInstances lists the values of each instance of option code in the
// options area of a DHCP message, in order (RFC 3396 keeps them apart on
// the wire).
func optionInstances(t *testing.T, b []byte, code byte) [][]byte {
	t.Helper()
	var out [][]byte
	opts := b[240:]
	for i := 0; i < len(opts) && opts[i] != 255; {
		if opts[i] == 0 {
			i++
			continue
		}
		l := int(opts[i+1])
		if opts[i] == code {
			out = append(out, opts[i+2:i+2+l])
		}
		i += 2 + l
	}
	return out
}

func TestHintsAuthoritative(t *testing.T) {
	p := &recordingPolicy{boots: map[string]Boot{
		// An accepted machine's OS: hints, no boot file.
		"02:00:00:00:00:21": {Hints: []byte(testHints)},
		// Its firmware: boot file and hints.
		"02:00:00:00:00:22": {TFTPFile: "uefi/x64/palisade.efi", Hints: []byte(testHints)},
		// Neither.
		"02:00:00:00:00:23": {},
	}}
	h := newHarness(t, authConfig(t), p)
	hintsOf := func(r *dhcpv4.DHCPv4) string { return string(r.Options.Get(dhcpv4.GenericOptionCode(OptionHints))) }

	// OS-style client (no PXEClient), asking for 224: OFFER and ACK carry it.
	offer := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:21", askHints()...))
	if offer == nil || hintsOf(offer) != testHints {
		t.Fatalf("OFFER to an OS asking for option 224: %v; want hints %q", offer, testHints)
	}
	if offer.BootFileName != "" || offer.BootFileNameOption() != "" {
		t.Errorf("OS client got boot file %q/%q", offer.BootFileName, offer.BootFileNameOption())
	}
	ack := h.dora("02:00:00:00:00:21", askHints()...)
	if hintsOf(ack) != testHints {
		t.Errorf("ACK to an OS asking for option 224: hints %q, want %q", hintsOf(ack), testHints)
	}
	// INFORM (RFC 2131 §4.3.5) is configuration too.
	inf := msg(t, dhcpv4.MessageTypeInform, "02:00:00:00:00:21", append(askHints(), dhcpv4.WithClientIP(ack.YourIPAddr))...)
	if r := h.relayed(inf); r == nil || hintsOf(r) != testHints {
		t.Errorf("ACK to INFORM asking for option 224: %v", r)
	}

	// Same client, option 224 not in its request list, or no list at all:
	// RFC 2132 §9.8, nothing unasked.
	for name, mods := range map[string][]dhcpv4.Modifier{
		"list without 224": {dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter)},
		"no list":          nil,
	} {
		r := h.dora("02:00:00:00:00:21", mods...)
		if r.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) {
			t.Errorf("%s: ACK carries option 224 %q", name, hintsOf(r))
		}
	}

	// Firmware that asks gets both; its boot answer is unchanged.
	pxe := append([]dhcpv4.Modifier{withArch(7), withVendor("PXEClient:Arch:00007")}, askHints()...)
	ack = h.dora("02:00:00:00:00:22", pxe...)
	if hintsOf(ack) != testHints || ack.BootFileName != "uefi/x64/palisade.efi" || ack.ClassIdentifier() != "PXEClient" {
		t.Errorf("PXE client asking for 224: file %q class %q hints %q", ack.BootFileName, ack.ClassIdentifier(), hintsOf(ack))
	}
	// Firmware that does not ask: boot answer only.
	ack = h.dora("02:00:00:00:00:22", withArch(7), withVendor("PXEClient:Arch:00007"),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionBootfileName, dhcpv4.OptionTFTPServerName))
	if ack.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) || ack.BootFileName != "uefi/x64/palisade.efi" {
		t.Errorf("PXE client not asking for 224: file %q hints %q", ack.BootFileName, hintsOf(ack))
	}
	// Nothing to hint: no option, even when asked.
	if ack := h.dora("02:00:00:00:00:23", askHints()...); ack.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) {
		t.Errorf("empty hints sent: %q", hintsOf(ack))
	}
	// A failing policy costs the hints, not the address.
	p.fail = context.DeadlineExceeded
	if ack := h.dora("02:00:00:00:00:21", askHints()...); ack.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) {
		t.Errorf("hints sent although the policy failed: %q", hintsOf(ack))
	}
	p.fail = nil
	if got := testutil.ToFloat64(h.s.met.hints.WithLabelValues("sent")); got != 6 {
		t.Errorf("hints sent = %v, want 6 (OFFER; OFFER, ACK; INFORM's ACK; PXE OFFER, ACK)", got)
	}
}

// TestHintsLong: text over 255 bytes is split into several option 224
// instances (RFC 3396 §5) that concatenate to the whole; a reply that would
// exceed the client's maximum message size drops the hints, keeps the lease.
func TestHintsLong(t *testing.T) {
	var addrs []string
	for i := range 16 {
		addrs = append(addrs, "keyd-"+strings.Repeat("k", 17)+string(rune('a'+i))+".rack.example:7443")
	}
	long := "keyd=" + strings.Join(addrs, ",") + " cluster=" + strings.Repeat("c", 64)
	if len(long) <= 2*255 {
		t.Fatalf("test hints are %d bytes; want more than two options' worth", len(long))
	}
	p := &recordingPolicy{boots: map[string]Boot{"02:00:00:00:00:31": {Hints: []byte(long)}}}
	h := newHarness(t, authConfig(t), p)

	disc := msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:31", askHints()...)
	disc.GatewayIPAddr = net.ParseIP(relayIP).To4()
	b := h.rawReply(h.relay, disc, relayIP+":67")
	if b == nil {
		t.Fatal("no OFFER")
	}
	parts := optionInstances(t, b, OptionHints)
	if len(parts) != 3 || len(parts[0]) != 255 || len(parts[1]) != 255 {
		lens := []int{}
		for _, p := range parts {
			lens = append(lens, len(p))
		}
		t.Fatalf("option 224 instances of lengths %v; want 255, 255, rest", lens)
	}
	if got := bytes.Join(parts, nil); string(got) != long {
		t.Errorf("instances concatenate to %q, want %q", got, long)
	}
	if len(b)+28 > 1500 {
		t.Errorf("reply of %d bytes exceeds the client's 1500", len(b))
	}
	// The decoder a client uses (dhcpv4, as the init) joins them.
	r, err := dhcpv4.FromBytes(b)
	if err != nil || string(r.Options.Get(dhcpv4.GenericOptionCode(OptionHints))) != long {
		t.Errorf("decoded option 224 differs: %v", err)
	}

	// Without option 57 the client takes 576 octets (RFC 2132 §9.10): the
	// hints do not fit, the lease still goes out.
	small := []dhcpv4.Modifier{dhcpv4.WithRequestedOptions(dhcpv4.GenericOptionCode(OptionHints))}
	ack := h.dora("02:00:00:00:00:31", small...)
	if ack.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) {
		t.Error("hints sent beyond the client's 576-octet limit")
	}
	if ack.YourIPAddr.IsUnspecified() {
		t.Error("ACK without an address")
	}
	if got := testutil.ToFloat64(h.s.met.hints.WithLabelValues("too_large")); got != 2 {
		t.Errorf("too_large = %v, want 2 (OFFER and ACK)", got)
	}
	// A short hint fits in 576 octets.
	p.boots["02:00:00:00:00:31"] = Boot{Hints: []byte(testHints)}
	if ack := h.dora("02:00:00:00:00:31", small...); string(ack.Options.Get(dhcpv4.GenericOptionCode(OptionHints))) != testHints {
		t.Error("short hints not sent to a client without option 57")
	}
}

// TestHintsProxy: a proxy answers boot firmware only and never sends
// hints; the OS gets them from the UKI's cmdline or the site's server.
func TestHintsProxy(t *testing.T) {
	p := &recordingPolicy{boots: map[string]Boot{
		"02:00:00:00:00:41": {TFTPFile: "uefi/x64/palisade.efi", Hints: []byte(testHints)},
		"02:00:00:00:00:42": {Hints: []byte(testHints)},
	}}
	h := newHarness(t, proxyConfig(), p)
	pxe := append([]dhcpv4.Modifier{withArch(7), withVendor("PXEClient:Arch:00007")}, askHints()...)
	offer, _ := h.do(h.local, msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:41", pxe...), "0.0.0.0:68")
	if offer == nil || offer.BootFileName != "uefi/x64/palisade.efi" {
		t.Fatalf("proxy OFFER: %v", offer)
	}
	if offer.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) {
		t.Error("proxy OFFER carries option 224")
	}
	// Hints alone are not boot information: a proxy stays silent.
	if r, _ := h.do(h.local, msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:42", pxe...), "0.0.0.0:68"); r != nil {
		t.Errorf("proxy answered a client with hints only: %v", r)
	}
	if r, _ := h.do(h.local, msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:41", askHints()...), "0.0.0.0:68"); r != nil {
		t.Errorf("proxy answered an OS client: %v", r)
	}
}
