package dhcp

import (
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// discardConn counts replies and drops them.
type discardConn struct {
	fakeConn
	mu sync.Mutex
	n  int
}

func (d *discardConn) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) {
	d.mu.Lock()
	d.n++
	d.mu.Unlock()
	return len(b), nil
}

// BenchmarkHandleDiscover is the CPU cost of one relayed DISCOVER → OFFER
// (parse, allocate, build, send), no disk involved.
func BenchmarkHandleDiscover(b *testing.B) {
	cfg := authConfig(b)
	cfg.Subnets[0].CIDR, cfg.Subnets[0].RangeStart, cfg.Subnets[0].RangeEnd = "10.0.0.0/8", "10.0.1.0", "10.255.255.254"
	cfg.Subnets[0].Reservations = nil
	h := newHarness(b, cfg, nil)
	dc := &discardConn{fakeConn: *newFakeConn(serverIP + ":67")}
	h.relay.conn = dc
	pkts := make([][]byte, 4096)
	for i := range pkts {
		m := msg(b, dhcpv4.MessageTypeDiscover, net.HardwareAddr{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}.String())
		m.GatewayIPAddr = net.ParseIP(relayIP).To4()
		pkts[i] = m.ToBytes()
	}
	peer := netip.MustParseAddrPort(relayIP + ":67")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.s.handle(b.Context(), h.relay, pkts[i%len(pkts)], peer)
	}
	b.StopTimer()
	if dc.n != b.N {
		b.Fatalf("%d OFFERs for %d DISCOVERs", dc.n, b.N)
	}
}

// BenchmarkDORA is one relayed DISCOVER + REQUEST with the lease committed
// (group commit, fsync on) before the ACK, 64 clients in flight.
func BenchmarkDORA(b *testing.B) {
	cfg := authConfig(b)
	cfg.Subnets[0].CIDR, cfg.Subnets[0].RangeStart, cfg.Subnets[0].RangeEnd = "10.0.0.0/8", "10.0.1.0", "10.255.255.254"
	cfg.Subnets[0].Reservations = nil
	h := newHarness(b, cfg, nil)
	dc := &discardConn{fakeConn: *newFakeConn(serverIP + ":67")}
	h.relay.conn = dc
	peer := netip.MustParseAddrPort(relayIP + ":67")
	sid := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(serverIP)))
	b.SetParallelism(32) // × GOMAXPROCS goroutines waiting on commits
	var next uint32
	var mu sync.Mutex
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			next++
			i := next
			mu.Unlock()
			mac := net.HardwareAddr{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
			d := msg(b, dhcpv4.MessageTypeDiscover, mac.String())
			d.GatewayIPAddr = net.ParseIP(relayIP).To4()
			h.s.handle(b.Context(), h.relay, d.ToBytes(), peer)
			ip, ok := h.s.table.byMACLookup(0, string(mac))
			if !ok {
				b.Error("no offer")
				return
			}
			r := msg(b, dhcpv4.MessageTypeRequest, mac.String(), sid, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(u32ToIP(ip))))
			r.GatewayIPAddr = net.ParseIP(relayIP).To4()
			done := make(chan struct{})
			h.s.handle(b.Context(), h.relay, r.ToBytes(), peer)
			h.s.store.in <- write{key: []byte("barrier!"), done: func(error) { close(done) }}
			<-done
		}
	})
}

// byMACLookup returns the address mac holds or was offered in subnet idx.
func (t *table) byMACLookup(idx int, mac string) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byMAC[idx][mac]
	if l == nil {
		return 0, false
	}
	return l.ip, true
}
