package dhcp

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	bolt "go.etcd.io/bbolt"
)

// sent is one datagram the server wrote.
type sent struct {
	b   []byte
	dst netip.AddrPort
}

// fakeConn records what the server sends; reads block until Close.
type fakeConn struct {
	out    chan sent
	local  *net.UDPAddr
	once   sync.Once
	closed chan struct{}
}

func newFakeConn(local string) *fakeConn {
	return &fakeConn{out: make(chan sent, 1024), local: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local)), closed: make(chan struct{})}
}

func (f *fakeConn) ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error) {
	<-f.closed
	return 0, netip.AddrPort{}, net.ErrClosed
}

func (f *fakeConn) WriteToUDPAddrPort(b []byte, a netip.AddrPort) (int, error) {
	f.out <- sent{b: append([]byte(nil), b...), dst: a}
	return len(b), nil
}

func (f *fakeConn) LocalAddr() net.Addr { return f.local }

// SetReadDeadline with a past time wakes readers, as on a socket.
func (f *fakeConn) SetReadDeadline(t time.Time) error {
	if !t.After(time.Now()) {
		f.Close()
	}
	return nil
}
func (f *fakeConn) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

// harness drives the handler directly: no sockets, a real lease file, a
// clock the test moves.
type harness struct {
	t     testing.TB
	s     *Server
	relay *listener // relayed traffic (perfdhcp style)
	local *listener // a directly attached interface
	pxe   *listener // port 4011 (proxy mode)
	now   time.Time
	db    string
}

const (
	relayIP  = "10.0.0.1"
	serverIP = "10.0.0.254"
)

func authConfig(t testing.TB) Config {
	t.Helper()
	return Config{
		Mode:    ModeAuthoritative,
		Listen:  serverIP + ":67",
		LeaseDB: filepath.Join(t.TempDir(), "leases.db"),
		Subnets: []Subnet{{
			CIDR: "10.0.0.0/24", RangeStart: "10.0.0.100", RangeEnd: "10.0.0.199",
			Router: "10.0.0.1", DNS: []string{"10.0.0.53"}, Domain: "rack.example",
			LeaseTime:    "1h",
			Reservations: []Reservation{{MAC: "02:00:00:00:00:99", IP: "10.0.0.50"}},
		}},
	}
}

func newHarness(t testing.TB, cfg Config, policy Policy) *harness {
	t.Helper()
	c, err := compile(cfg)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	h := &harness{t: t, now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), db: cfg.LeaseDB}
	s, err := newServer(c, policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Now = func() time.Time { return h.now }
	if err := s.openLeases(); err != nil {
		t.Fatal(err)
	}
	sid := net.ParseIP(serverIP).To4()
	h.relay = &listener{conn: newFakeConn(serverIP + ":67"), serverIP: sid}
	h.local = &listener{conn: newFakeConn("0.0.0.0:67"), iface: "test0", serverIP: sid}
	if s.table != nil {
		h.local.local = s.table.subnets[:1]
	}
	h.pxe = &listener{conn: newFakeConn("0.0.0.0:4011"), iface: "test0", pxe: true, serverIP: sid}
	s.ls = []*listener{h.relay, h.local, h.pxe}
	// Start the committer, as Serve would.
	s.serving.Do(s.startWorkers)
	h.s = s
	t.Cleanup(func() { s.Close() })
	return h
}

// barrier waits until every write queued so far committed and its ACK (if
// any) was sent.
func (h *harness) barrier() {
	h.t.Helper()
	if h.s.store == nil {
		return
	}
	done := make(chan struct{})
	h.s.store.in <- write{key: []byte("barrier!"), done: func(error) { close(done) }}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		h.t.Fatal("commit barrier not reached in 5s")
	}
}

// do hands m to the handler on l from peer and returns the reply, or nil
// when the server stayed silent.
func (h *harness) do(l *listener, m *dhcpv4.DHCPv4, peer string) (*dhcpv4.DHCPv4, netip.AddrPort) {
	h.t.Helper()
	h.s.handle(context.Background(), l, m.ToBytes(), netip.MustParseAddrPort(peer))
	h.barrier()
	conn := l.conn.(*fakeConn)
	select {
	case out := <-conn.out:
		r, err := dhcpv4.FromBytes(out.b)
		if err != nil {
			h.t.Fatalf("server sent an unparsable reply: %v", err)
		}
		select {
		case extra := <-conn.out:
			h.t.Fatalf("server sent two replies; second to %v", extra.dst)
		default:
		}
		return r, out.dst
	default:
		return nil, netip.AddrPort{}
	}
}

// relayed sends m as relay 10.0.0.1 would (giaddr set, from port 67).
func (h *harness) relayed(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	h.t.Helper()
	m.GatewayIPAddr = net.ParseIP(relayIP).To4()
	r, dst := h.do(h.relay, m, relayIP+":67")
	if r != nil && dst != netip.MustParseAddrPort(relayIP+":67") {
		h.t.Errorf("relayed reply sent to %v, want %s:67", dst, relayIP)
	}
	return r
}

// dora runs DISCOVER/OFFER/REQUEST/ACK through the relay and returns the ACK.
func (h *harness) dora(mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	h.t.Helper()
	offer := h.relayed(msg(h.t, dhcpv4.MessageTypeDiscover, mac, mods...))
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		h.t.Fatalf("DISCOVER from %s: got %v, want OFFER", mac, offer)
	}
	req := msg(h.t, dhcpv4.MessageTypeRequest, mac, append(mods,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))...)
	ack := h.relayed(req)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		h.t.Fatalf("REQUEST from %s: got %v, want ACK", mac, ack)
	}
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		h.t.Fatalf("ACK yiaddr %v, OFFER yiaddr %v", ack.YourIPAddr, offer.YourIPAddr)
	}
	return ack
}

// onDisk reads the lease file's record for ip (the server holds the file,
// so it is read through the server's handle).
func (h *harness) onDisk(ip string) (*lease, bool) {
	h.t.Helper()
	var l *lease
	key := leaseKey(mustU32(h.t, ip))
	err := h.s.store.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketLeases).Get(key)
		if v == nil {
			return nil
		}
		var err error
		l, err = decodeLease(key, v)
		return err
	})
	if err != nil {
		h.t.Fatalf("read lease %s: %v", ip, err)
	}
	return l, l != nil
}

func mustU32(t testing.TB, ip string) uint32 {
	t.Helper()
	v, ok := ipToU32(net.ParseIP(ip))
	if !ok {
		t.Fatalf("%q is not IPv4", ip)
	}
	return v
}

// msg builds a client message with a fixed transaction ID per MAC.
func msg(t testing.TB, typ dhcpv4.MessageType, mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	m := &dhcpv4.DHCPv4{
		OpCode: dhcpv4.OpcodeBootRequest, HWType: iana.HWTypeEthernet, ClientHWAddr: hw,
		TransactionID: dhcpv4.TransactionID{hw[2], hw[3], hw[4], hw[5]},
		ClientIPAddr:  net.IPv4zero, YourIPAddr: net.IPv4zero, ServerIPAddr: net.IPv4zero, GatewayIPAddr: net.IPv4zero,
		Options: dhcpv4.Options{},
	}
	m.UpdateOption(dhcpv4.OptMessageType(typ))
	for _, f := range mods {
		f(m)
	}
	return m
}

// recordingPolicy returns boot per MAC and remembers every Client it saw
// and every address the server reported as leased.
type recordingPolicy struct {
	mu     sync.Mutex
	boots  map[string]Boot
	seen   []Client
	fail   error
	leases map[string]netip.Addr
}

func (p *recordingPolicy) Leased(mac net.HardwareAddr, ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.leases == nil {
		p.leases = map[string]netip.Addr{}
	}
	p.leases[mac.String()] = ip
}

func (p *recordingPolicy) leased() map[string]netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.leases)
}

func (p *recordingPolicy) Boot(_ context.Context, c Client) (Boot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, c)
	if p.fail != nil {
		return Boot{}, p.fail
	}
	return p.boots[c.MAC.String()], nil
}

func (p *recordingPolicy) last() Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return Client{}
	}
	return p.seen[len(p.seen)-1]
}
