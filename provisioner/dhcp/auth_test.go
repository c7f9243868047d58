package dhcp

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDORA(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	ack := h.dora("02:00:00:00:00:01")
	got := map[string]string{
		"yiaddr": ack.YourIPAddr.String(),
		"server": ack.ServerIdentifier().String(),
		"mask":   net.IP(ack.SubnetMask()).String(),
		"router": ack.Router()[0].String(),
		"dns":    ack.DNS()[0].String(),
		"domain": ack.DomainName(),
		"lease":  ack.IPAddressLeaseTime(0).String(),
		"t1":     ack.IPAddressRenewalTime(0).String(),
		"t2":     ack.IPAddressRebindingTime(0).String(),
		"giaddr": ack.GatewayIPAddr.String(),
		"chaddr": ack.ClientHWAddr.String(),
	}
	want := map[string]string{
		"yiaddr": "10.0.0.100", "server": serverIP, "mask": "255.255.255.0", "router": "10.0.0.1",
		"dns": "10.0.0.53", "domain": "rack.example", "lease": "1h0m0s", "t1": "30m0s", "t2": "52m30s",
		"giaddr": relayIP, "chaddr": "02:00:00:00:00:01",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ACK (-want +got):\n%s", d)
	}
	l, ok := h.onDisk("10.0.0.100")
	if !ok {
		t.Fatal("ACKed lease 10.0.0.100 is not in the lease file")
	}
	if l.mac != string(ack.ClientHWAddr) || l.state != stateBound || l.expiry != h.now.Add(time.Hour).UnixNano() {
		t.Errorf("stored lease = %+v", l)
	}
	// A second client gets the next address; the first keeps its own.
	if ip := h.dora("02:00:00:00:00:02").YourIPAddr.String(); ip != "10.0.0.101" {
		t.Errorf("second client got %s, want 10.0.0.101", ip)
	}
	if ip := h.dora("02:00:00:00:00:01").YourIPAddr.String(); ip != "10.0.0.100" {
		t.Errorf("first client again got %s, want its 10.0.0.100", ip)
	}
}

func TestOfferIsNotDurable(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	offer := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:01"))
	if offer == nil {
		t.Fatal("no OFFER")
	}
	if _, ok := h.onDisk(offer.YourIPAddr.String()); ok {
		t.Error("an OFFER was written to the lease file")
	}
	// The offered address is held for the client against others...
	if ip := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:02", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))).YourIPAddr; ip.Equal(offer.YourIPAddr) {
		t.Errorf("offered address %v offered again to another client", ip)
	}
	// ...until the hold ends.
	h.now = h.now.Add(defaultOfferHold + time.Second)
	if ip := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:03", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))).YourIPAddr; !ip.Equal(offer.YourIPAddr) {
		t.Errorf("after the hold, third client got %v, want the freed %v", ip, offer.YourIPAddr)
	}
}

func TestRenew(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	mac := "02:00:00:00:00:01"
	ack := h.dora(mac)
	ip := ack.YourIPAddr
	h.now = h.now.Add(40 * time.Minute)
	for _, tc := range []struct {
		name string
		peer string
		want netip.AddrPort
	}{
		// RENEWING: unicast from the client's address (RFC 2131 §4.4.5).
		{"renewing", ip.String() + ":68", netip.MustParseAddrPort(ip.String() + ":68")},
		// REBINDING: broadcast, arriving on the interface.
		{"rebinding", "10.0.0.100:68", netip.MustParseAddrPort(ip.String() + ":68")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.now = h.now.Add(time.Minute)
			req := msg(t, dhcpv4.MessageTypeRequest, mac, dhcpv4.WithClientIP(ip))
			r, dst := h.do(h.local, req, tc.peer)
			if r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
				t.Fatalf("renewal: got %v, want ACK", r)
			}
			if !r.ClientIPAddr.Equal(ip) || !r.YourIPAddr.Equal(ip) {
				t.Errorf("renewal ciaddr/yiaddr = %v/%v, want %v", r.ClientIPAddr, r.YourIPAddr, ip)
			}
			if dst != tc.want {
				t.Errorf("renewal ACK sent to %v, want %v", dst, tc.want)
			}
			l, _ := h.onDisk(ip.String())
			if want := h.now.Add(time.Hour).UnixNano(); l == nil || l.expiry != want {
				t.Errorf("stored expiry after renewal = %+v, want %d", l, want)
			}
		})
	}
	// Another client cannot renew this address.
	r, _ := h.do(h.local, msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:02", dhcpv4.WithClientIP(ip)), ip.String()+":68")
	if r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("renewal of someone else's address: got %v, want NAK", r)
	}
}

func TestReleaseAndDecline(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	a, b := "02:00:00:00:00:01", "02:00:00:00:00:02"
	ipA := h.dora(a).YourIPAddr
	ipB := h.dora(b).YourIPAddr

	// A RELEASE from another MAC changes nothing.
	if r := h.relayed(msg(t, dhcpv4.MessageTypeRelease, b, dhcpv4.WithClientIP(ipA))); r != nil {
		t.Fatalf("RELEASE answered: %v", r)
	}
	if _, ok := h.onDisk(ipA.String()); !ok {
		t.Fatal("someone else's RELEASE removed the lease")
	}
	h.relayed(msg(t, dhcpv4.MessageTypeRelease, a, dhcpv4.WithClientIP(ipA)))
	if _, ok := h.onDisk(ipA.String()); ok {
		t.Error("released lease still in the lease file")
	}
	if _, ok := h.s.table.lookup(mustU32(t, ipA.String())); ok {
		t.Error("released lease still in memory")
	}

	// DECLINE: the address leaves the pool, durably, for decline_hold.
	h.relayed(msg(t, dhcpv4.MessageTypeDecline, b, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ipB))))
	l, ok := h.onDisk(ipB.String())
	if !ok || l.state != stateDeclined || l.mac != "" {
		t.Fatalf("declined address on disk = %+v", l)
	}
	for i := 0; i < 3; i++ {
		// Even asking for it by name does not get it.
		mac := net.HardwareAddr{2, 0, 0, 0, 1, byte(i)}.String()
		if got := h.dora(mac, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ipB))).YourIPAddr; got.Equal(ipB) {
			t.Errorf("declined %v handed to %s", ipB, mac)
		}
	}
	h.now = h.now.Add(defaultDeclineHold + time.Second)
	h.s.sweep()
	h.barrier()
	if _, ok := h.onDisk(ipB.String()); ok {
		t.Error("declined record outlived decline_hold after a sweep")
	}
}

func TestExpiry(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	ip := h.dora("02:00:00:00:00:01").YourIPAddr
	if got := h.s.table.inUse(h.now); got != 1 {
		t.Errorf("leases in use = %v, want 1", got)
	}
	h.now = h.now.Add(time.Hour + time.Second)
	if got := h.s.table.inUse(h.now); got != 0 {
		t.Errorf("leases in use after expiry = %v, want 0", got)
	}
	// Expired but not swept: already free for anyone.
	r := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:02", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip))))
	if r == nil || !r.YourIPAddr.Equal(ip) {
		t.Errorf("expired address not offered to a requester: %v", r)
	}
	// Once that offer lapsed too, a sweep deletes the stale record.
	h.now = h.now.Add(defaultOfferHold + time.Second)
	h.s.sweep()
	h.barrier()
	if _, ok := h.onDisk(ip.String()); ok {
		t.Error("expired lease still on disk after sweep")
	}
	if _, ok := h.s.table.lookup(mustU32(t, ip.String())); ok {
		t.Error("expired lease still in memory after sweep")
	}
}

func TestReservation(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	// Before its owner ever asked, the reserved address is not for others.
	early := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:02", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.0.0.50")))))
	if early == nil || early.YourIPAddr.Equal(net.ParseIP("10.0.0.50")) {
		t.Errorf("reserved address offered to another MAC before its owner asked: %v", early)
	}
	if ip := h.dora("02:00:00:00:00:99").YourIPAddr.String(); ip != "10.0.0.50" {
		t.Errorf("reserved MAC got %s, want 10.0.0.50 (outside the range)", ip)
	}
	// Nobody else gets the reserved address, even by asking for it.
	r := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:01", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.0.0.50")))))
	if r == nil || r.YourIPAddr.Equal(net.ParseIP("10.0.0.50")) {
		t.Errorf("reserved address offered to another MAC: %v", r)
	}
	nak := h.relayed(msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:01", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.0.0.50")))))
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("REQUEST for a reserved address by another MAC: got %v, want NAK", nak)
	}
	if !nak.IsBroadcast() {
		t.Error("NAK through a relay without the broadcast bit (RFC 2131 §4.3.2)")
	}
}

func TestPoolExhaustion(t *testing.T) {
	cfg := authConfig(t)
	cfg.Subnets[0].RangeStart, cfg.Subnets[0].RangeEnd = "10.0.0.100", "10.0.0.101"
	h := newHarness(t, cfg, nil)
	h.dora("02:00:00:00:00:01")
	h.dora("02:00:00:00:00:02")
	if r := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:03")); r != nil {
		t.Fatalf("exhausted pool still offered %v", r.YourIPAddr)
	}
	if got := testutil.ToFloat64(h.s.met.packets.WithLabelValues("discover", resultDropped)); got != 1 {
		t.Errorf("dropped DISCOVERs = %v, want 1", got)
	}
}

func TestRequestSelectingOtherServer(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	mac := "02:00:00:00:00:01"
	offer := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, mac))
	req := msg(t, dhcpv4.MessageTypeRequest, mac,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.0.0.253"))),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))
	if r := h.relayed(req); r != nil {
		t.Fatalf("REQUEST for another server answered: %v", r)
	}
	if _, ok := h.s.table.lookup(mustU32(t, offer.YourIPAddr.String())); ok {
		t.Error("offer kept after the client chose another server")
	}
}

func TestInitRebootAndNAK(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	mac := "02:00:00:00:00:01"
	ip := h.dora(mac).YourIPAddr
	ok := h.relayed(msg(t, dhcpv4.MessageTypeRequest, mac, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip))))
	if ok == nil || ok.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("INIT-REBOOT with own address: got %v, want ACK", ok)
	}
	for name, want := range map[string]string{
		"other subnet": "192.168.9.9",
		"network addr": "10.0.0.0",
		"out of range": "10.0.0.7",
	} {
		r := h.relayed(msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:02", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(want)))))
		if r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
			t.Errorf("%s: INIT-REBOOT for %s got %v, want NAK", name, want, r)
		}
	}
}

func TestRelaySubnetSelection(t *testing.T) {
	cfg := authConfig(t)
	cfg.Subnets = append(cfg.Subnets, Subnet{CIDR: "10.0.1.0/24", RangeStart: "10.0.1.10", RangeEnd: "10.0.1.20", Router: "10.0.1.1"})
	h := newHarness(t, cfg, nil)
	for relay, want := range map[string]string{"10.0.0.1": "10.0.0.100", "10.0.1.1": "10.0.1.10"} {
		m := msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:01")
		m.GatewayIPAddr = net.ParseIP(relay).To4()
		r, dst := h.do(h.relay, m, relay+":67")
		if r == nil || r.YourIPAddr.String() != want {
			t.Errorf("relay %s: offer %v, want %s", relay, r, want)
			continue
		}
		if dst != netip.MustParseAddrPort(relay+":67") {
			t.Errorf("relay %s: OFFER sent to %v", relay, dst)
		}
	}
	m := msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:02")
	m.GatewayIPAddr = net.ParseIP("192.168.50.1").To4()
	if r, _ := h.do(h.relay, m, "192.168.50.1:67"); r != nil {
		t.Errorf("relay from an unserved subnet got an offer: %v", r)
	}
}

func TestInform(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	r, dst := h.do(h.local, msg(t, dhcpv4.MessageTypeInform, "02:00:00:00:00:01", dhcpv4.WithClientIP(net.ParseIP("10.0.0.9"))), "10.0.0.9:68")
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("INFORM: got %v, want ACK", r)
	}
	if !r.YourIPAddr.IsUnspecified() || r.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Errorf("INFORM ACK carries an address or lease time: yiaddr %v", r.YourIPAddr)
	}
	if dst != netip.MustParseAddrPort("10.0.0.9:68") {
		t.Errorf("INFORM ACK sent to %v", dst)
	}
}

func TestDirectBroadcast(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	r, dst := h.do(h.local, msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:01"), "0.0.0.0:68")
	if r == nil {
		t.Fatal("no OFFER on the interface")
	}
	if dst != netip.MustParseAddrPort("255.255.255.255:68") {
		t.Errorf("OFFER to a client without address sent to %v, want broadcast", dst)
	}
}

func TestNoAckBeforeCommit(t *testing.T) {
	h := newHarness(t, authConfig(t), nil)
	mac := "02:00:00:00:00:01"
	offer := h.relayed(msg(t, dhcpv4.MessageTypeDiscover, mac))
	h.s.store.fault = func() error { return errors.New("disk gone") }
	req := msg(t, dhcpv4.MessageTypeRequest, mac,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))
	if r := h.relayed(req); r != nil {
		t.Fatalf("ACK sent although its commit failed: %v", r)
	}
	if got := testutil.ToFloat64(h.s.met.commitErrors); got < 1 {
		t.Errorf("commit errors = %v, want ≥ 1", got)
	}
	h.s.store.fault = nil
	if r := h.relayed(req); r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("retransmitted REQUEST after the disk recovered: got %v, want ACK", r)
	}
}

func TestRestartKeepsLeases(t *testing.T) {
	cfg := authConfig(t)
	h := newHarness(t, cfg, nil)
	ip := h.dora("02:00:00:00:00:01").YourIPAddr
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
	h2 := newHarness(t, cfg, nil)
	h2.now = h.now.Add(time.Minute)
	l, ok := h2.s.table.lookup(mustU32(t, ip.String()))
	if !ok || l.state != stateBound {
		t.Fatalf("lease %v lost across restart", ip)
	}
	if r := h2.relayed(msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:03", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)))); r == nil || r.YourIPAddr.Equal(ip) {
		t.Errorf("after restart a leased address was offered to another client: %v", r)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		return Config{Mode: ModeAuthoritative, Interfaces: []string{"eth1"}, LeaseDB: "/var/lib/x.db",
			Subnets: []Subnet{{CIDR: "10.1.0.0/16", RangeStart: "10.1.1.0", RangeEnd: "10.1.255.254"}}}
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"mode", func(c *Config) { c.Mode = "relay" }},
		{"interfaces", func(c *Config) { c.Interfaces = nil }},
		{"interfaces[1]", func(c *Config) { c.Interfaces = append(c.Interfaces, "eth1") }},
		{"interfaces[0]", func(c *Config) { c.Interfaces[0] = "a/b" }},
		{"listen", func(c *Config) { c.Listen = "localhost" }},
		{"pxe_listen", func(c *Config) { c.PXEListen = "127.0.0.1:4011" }},
		{"server_ip", func(c *Config) { c.ServerIP = "::1" }},
		{"lease_db", func(c *Config) { c.LeaseDB = "" }},
		{"offer_hold", func(c *Config) { c.OfferHold = "soon" }},
		{"decline_hold", func(c *Config) { c.DeclineHold = "-1s" }},
		{"max_batch", func(c *Config) { c.MaxBatch = -1 }},
		{"subnets", func(c *Config) { c.Subnets = nil }},
		{"subnets[0].cidr", func(c *Config) { c.Subnets[0].CIDR = "10.1.0.0" }},
		{"subnets[0].cidr", func(c *Config) { c.Subnets[0].CIDR = "10.1.0.0/31" }},
		{"subnets[1].cidr", func(c *Config) { c.Subnets = append(c.Subnets, Subnet{CIDR: "10.1.2.0/24"}) }},
		{"subnets[0].range_start", func(c *Config) { c.Subnets[0].RangeStart = "10.2.0.1" }},
		{"subnets[0].range_end", func(c *Config) { c.Subnets[0].RangeEnd = "10.1.255.255" }},
		{"subnets[0].range_end", func(c *Config) { c.Subnets[0].RangeEnd = "10.1.0.255" }},
		{"subnets[0].router", func(c *Config) { c.Subnets[0].Router = "10.9.0.1" }},
		{"subnets[0].dns[0]", func(c *Config) { c.Subnets[0].DNS = []string{"dns.example"} }},
		{"subnets[0].lease_time", func(c *Config) { c.Subnets[0].LeaseTime = "0s" }},
		{"subnets[0].reservations[0].mac", func(c *Config) {
			c.Subnets[0].Reservations = []Reservation{{MAC: "zz", IP: "10.1.0.5"}}
		}},
		{"subnets[0].reservations[0].ip", func(c *Config) {
			c.Subnets[0].Reservations = []Reservation{{MAC: "02:00:00:00:00:01", IP: "10.3.0.5"}}
		}},
		{"subnets[0].reservations[1].mac", func(c *Config) {
			c.Subnets[0].Reservations = []Reservation{{MAC: "02:00:00:00:00:01", IP: "10.1.0.5"}, {MAC: "02:00:00:00:00:01", IP: "10.1.0.6"}}
		}},
		{"subnets", func(c *Config) { c.Mode = ModeProxy }},
	} {
		c := base()
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%s: Validate() = %v, want an error naming %q", tc.field, err, tc.field)
		}
	}
}
