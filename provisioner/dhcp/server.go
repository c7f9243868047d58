// Package dhcp is the provisioner's DHCPv4 server: authoritative (pools,
// durable leases with group commit) or proxyDHCP (boot answers only, ports 67
// and 4011). It is not a trust decision: what it hands out is only a hint.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxPacket is the largest request accepted: one Ethernet frame's payload.
// A DHCP client may not send more without IP fragmentation (RFC 2131 §2,
// option 57 only ever raises what the server may send up to the MTU).
const maxPacket = 1500

// Server serves DHCP on its configured interfaces and addresses.
type Server struct {
	cfg      *compiled
	log      *slog.Logger
	policy   Policy
	met      *metrics
	table    *table // nil in proxy mode
	store    *store // nil in proxy mode
	ls       []*listener
	serving  sync.Once
	closed   sync.Once
	closeErr error

	// Now is the clock; tests move it.
	Now func() time.Time
	// SweepEvery is how often expired leases are forgotten (default 1m).
	SweepEvery time.Duration
}

// listener is one socket and what is known about where it listens.
type listener struct {
	conn packetConn
	// iface is "" for Listen/PXEListen sockets.
	iface string
	// pxe marks the port-4011 boot server discovery service.
	pxe bool
	// prefixes are the interface's IPv4 addresses (for Listen: its IP /32).
	prefixes []netip.Prefix
	// serverIP is this socket's server identifier and default next-server.
	serverIP net.IP
	// local are the subnets the interface has an address in, in order.
	local []*subnet
}

// packetConn is what the handler needs of a socket (a *net.UDPConn in
// production, a recorder in tests).
type packetConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	SetReadDeadline(t time.Time) error
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	LocalAddr() net.Addr
	Close() error
}

// New validates cfg, checks the interfaces, opens the lease file and binds
// every socket. policy may be nil (no boot answers); reg may be nil (no
// metrics registered); log may be nil (discard). Serve must run, or Close be
// called, to release what New opened.
func New(cfg Config, policy Policy, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	c, err := compile(cfg)
	if err != nil {
		return nil, fmt.Errorf("dhcp config: %w", err)
	}
	s, err := newServer(c, policy, log)
	if err != nil {
		return nil, err
	}
	// Interfaces are checked before anything is opened, so a refusal leaves
	// nothing behind.
	type ifplan struct {
		name     string
		prefixes []netip.Prefix
		local    []*subnet
	}
	var plans []ifplan
	for _, name := range c.interfaces {
		ps, err := ifacePrefixes(name)
		if err != nil {
			return nil, err
		}
		p := ifplan{name: name, prefixes: ps}
		for _, pf := range ps {
			if sn := s.subnetFor(pf.Addr()); sn != nil {
				p.local = append(p.local, sn)
			}
		}
		if c.mode == ModeAuthoritative && len(p.local) == 0 {
			return nil, fmt.Errorf("interfaces: %s has no IPv4 address inside a configured subnet (addresses %v): refusing to serve it", name, ps)
		}
		if len(ps) == 0 {
			return nil, fmt.Errorf("interfaces: %s has no IPv4 address", name)
		}
		plans = append(plans, p)
	}
	if err := s.openLeases(); err != nil {
		return nil, err
	}
	ctx := context.Background()
	fail := func(err error) (*Server, error) {
		s.Close()
		return nil, err
	}
	for _, p := range plans {
		ports := []int{67}
		if c.mode == ModeProxy {
			ports = append(ports, PXEPort)
		}
		for _, port := range ports {
			conn, err := listenUDP(ctx, p.name, &net.UDPAddr{IP: net.IPv4zero, Port: port})
			if err != nil {
				return fail(fmt.Errorf("interfaces: %s: listen on port %d: %w", p.name, port, err))
			}
			l := &listener{conn: conn, iface: p.name, pxe: port == PXEPort, prefixes: p.prefixes, local: p.local}
			l.serverIP = s.pickServerIP(l)
			s.ls = append(s.ls, l)
		}
	}
	addListen := func(field string, a *net.UDPAddr, pxe bool) error {
		conn, err := listenUDP(ctx, "", a)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		l := &listener{conn: conn, pxe: pxe, prefixes: []netip.Prefix{netip.PrefixFrom(ip, 32)}}
		if sn := s.subnetFor(ip); sn != nil {
			l.local = []*subnet{sn}
		}
		l.serverIP = s.pickServerIP(l)
		s.ls = append(s.ls, l)
		return nil
	}
	if c.listen != nil {
		if err := addListen("listen", c.listen, false); err != nil {
			return fail(err)
		}
	}
	if c.pxeListen != nil {
		if err := addListen("pxe_listen", c.pxeListen, true); err != nil {
			return fail(err)
		}
	}
	// Registered last: a refused start leaves the registry as it was.
	var inUse func() float64
	if s.table != nil {
		inUse = func() float64 { return float64(s.table.inUse(s.Now())) }
	}
	if err := s.met.register(reg, inUse); err != nil {
		return fail(fmt.Errorf("dhcp metrics: %w", err))
	}
	return s, nil
}

// newServer builds a server without touching the network: the caller adds
// listeners.
func newServer(c *compiled, policy Policy, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: c, log: log, policy: policy, Now: time.Now, SweepEvery: time.Minute}
	if c.mode == ModeAuthoritative {
		s.table = newTable(c)
	}
	s.met = newMetrics()
	return s, nil
}

// openLeases opens the lease file and loads the unexpired leases.
func (s *Server) openLeases() error {
	if s.table == nil {
		return nil
	}
	var err error
	if s.store, err = openStore(s.cfg.leaseDB, s.cfg.maxBatch); err != nil {
		return err
	}
	s.store.observe = s.met.observeCommit
	now := s.Now().UnixNano()
	var expired [][]byte
	bad, err := s.store.load(func(l *lease) {
		if l.expiry <= now {
			expired = append(expired, leaseKey(l.ip))
			return
		}
		if !s.table.restore(l) {
			s.log.Warn("dhcp: stored lease outside every configured subnet ignored", "ip", u32ToIP(l.ip))
		}
	})
	if err != nil {
		s.store.db.Close()
		return fmt.Errorf("load lease_db: %w", err)
	}
	for _, e := range bad {
		s.log.Warn("dhcp: unreadable lease record skipped", "err", e)
	}
	if err := s.store.delete(expired); err != nil {
		s.store.db.Close()
		return fmt.Errorf("lease_db: forget expired leases: %w", err)
	}
	return nil
}

func (s *Server) subnetFor(a netip.Addr) *subnet {
	if s.table == nil || !a.Is4() {
		return nil
	}
	b := a.As4()
	v, _ := ipToU32(b[:])
	return s.table.subnetOf(v)
}

// pickServerIP: the configured server_ip, else the interface address inside
// a served subnet, else its first address.
func (s *Server) pickServerIP(l *listener) net.IP {
	if s.cfg.serverIP != nil {
		return s.cfg.serverIP
	}
	for _, p := range l.prefixes {
		if s.subnetFor(p.Addr()) != nil {
			return net.IP(p.Addr().AsSlice())
		}
	}
	if len(l.prefixes) > 0 {
		return net.IP(l.prefixes[0].Addr().AsSlice())
	}
	return net.IPv4zero
}

func ifacePrefixes(name string) ([]netip.Prefix, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interfaces: %s: %w", name, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("interfaces: %s: addresses: %w", name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP.To4())
		ones, _ := n.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// Addrs are the bound socket addresses, in the order: per interface port 67
// (and 4011 in proxy mode), then Listen, then PXEListen.
func (s *Server) Addrs() []net.Addr {
	var out []net.Addr
	for _, l := range s.ls {
		out = append(out, l.conn.LocalAddr())
	}
	return out
}

// Serve answers requests until ctx is done, then closes every socket and the
// lease file (after the last queued commit finished) and returns.
func (s *Server) Serve(ctx context.Context) error {
	started := false
	s.serving.Do(func() {
		started = true
		s.startWorkers()
	})
	if !started {
		return errors.New("dhcp: Serve called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(s.ls))
	for _, l := range s.ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.readLoop(ctx, l); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	if s.table != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sweepLoop(ctx)
		}()
	}
	<-ctx.Done()
	// Readers are woken by a past deadline, not by closing the sockets:
	// Close still sends the ACKs of leases that are committing now.
	for _, l := range s.ls {
		l.conn.SetReadDeadline(time.Unix(1, 0))
	}
	wg.Wait()
	err := s.Close()
	select {
	case e := <-errc:
		return e
	default:
	}
	return err
}

// startWorkers starts the committer.
func (s *Server) startWorkers() {
	if s.store != nil {
		go s.store.run()
	}
}

// Close finishes queued commits, sends their ACKs, and releases the sockets
// and the lease file. Serve calls it on return; call it directly only when
// Serve never ran.
func (s *Server) Close() error {
	s.closed.Do(func() {
		// Workers that never started are started so that draining ends.
		s.serving.Do(s.startWorkers)
		if s.store != nil {
			s.closeErr = s.store.close()
		}
		for _, l := range s.ls {
			l.conn.Close()
		}
	})
	return s.closeErr
}

func (s *Server) readLoop(ctx context.Context, l *listener) error {
	// One byte more than accepted, so an oversized datagram is seen as such
	// instead of silently truncated.
	buf := make([]byte, maxPacket+1)
	for {
		n, peer, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dhcp: read on %s: %w", l.conn.LocalAddr(), err)
		}
		s.handle(ctx, l, buf[:n], peer)
	}
}

func (s *Server) sweepLoop(ctx context.Context) {
	t := time.NewTicker(s.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sweep()
		}
	}
}

// sweep forgets expired leases and deletes them from disk.
func (s *Server) sweep() {
	for _, w := range s.table.sweep(s.Now()) {
		s.store.in <- w
	}
}
