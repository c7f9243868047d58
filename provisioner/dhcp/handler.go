package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

const (
	serverPort = 67
	clientPort = 68
	// maxOptions bounds the option entries of one request; legitimate
	// clients send a few dozen, a flood is dropped before it is parsed.
	maxOptions = 128
	// policyTimeout bounds how long a request waits for the boot policy.
	policyTimeout = 2 * time.Second
)

var magicCookie = []byte{99, 130, 83, 99}

// scanOptions walks the options area (RFC 2132 §2) without building
// anything, counting entries, so that floods and broken lengths are refused
// cheaply and by reason.
func scanOptions(b []byte) (n int, reason string) {
	for i := 0; i < len(b); {
		code := b[i]
		switch code {
		case 0: // Pad
			i++
			continue
		case 255: // End
			return n, ""
		}
		if i+1 >= len(b) {
			return n, badMalformed
		}
		l := int(b[i+1])
		if i+2+l > len(b) {
			return n, badMalformed
		}
		n++
		if n > maxOptions {
			return n, badOptionFlood
		}
		i += 2 + l
	}
	return n, badMalformed // no End option (RFC 2131 §4.1 requires it)
}

// precheck refuses what is not worth parsing; reason "" means parse it.
func precheck(b []byte) string {
	switch {
	case len(b) > maxPacket:
		return badOversized
	case len(b) < 240: // fixed header (236) + magic cookie
		return badTruncated
	case b[0] != byte(dhcpv4.OpcodeBootRequest):
		return badWrongOp
	case b[2] == 0 || b[2] > 16:
		return badHWAddr
	case !bytes.Equal(b[236:240], magicCookie):
		return badMalformed
	}
	_, reason := scanOptions(b[240:])
	return reason
}

func (s *Server) bad(ctx context.Context, l *listener, peer netip.AddrPort, reason string, err error) {
	s.met.bad.WithLabelValues(reason).Inc()
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("dhcp: bad packet dropped", "reason", reason, "from", peer, "local", l.conn.LocalAddr(), "err", err)
	}
}

func (s *Server) count(m *dhcpv4.DHCPv4, result string) {
	s.met.packet(m.MessageType(), result)
}

// handle serves one datagram: it answers, queues a commit whose completion
// answers, or drops it. It never fails: everything wrong with the input is
// counted and logged at debug level.
func (s *Server) handle(ctx context.Context, l *listener, b []byte, peer netip.AddrPort) {
	if reason := precheck(b); reason != "" {
		s.bad(ctx, l, peer, reason, nil)
		return
	}
	m, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.bad(ctx, l, peer, badMalformed, err)
		return
	}
	mt := m.MessageType()
	switch mt {
	case dhcpv4.MessageTypeNone:
		// BOOTP (RFC 951) clients are not served.
		s.bad(ctx, l, peer, badNoType, nil)
		return
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline,
		dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform:
	case dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak:
		s.bad(ctx, l, peer, badUnexpected, nil)
		return
	default:
		s.bad(ctx, l, peer, badUnknownType, nil)
		return
	}
	var result string
	if s.table == nil {
		result = s.proxy(ctx, l, m, peer)
	} else {
		result = s.authoritative(ctx, l, m, peer)
	}
	if result != "" {
		s.count(m, result)
	}
}

// authoritative serves one request in authoritative mode. It returns the
// result label, or "" when the result is counted later (after a commit).
func (s *Server) authoritative(ctx context.Context, l *listener, m *dhcpv4.DHCPv4, peer netip.AddrPort) string {
	if l.pxe {
		return resultIgnored
	}
	sn := s.selectSubnet(l, m)
	if sn == nil {
		s.debug(ctx, "no subnet for request", m, peer)
		return resultDropped
	}
	mac := string(m.ClientHWAddr)
	now := s.Now()
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		req, _ := ipToU32(m.RequestedIPAddress())
		ip, ok := s.table.offer(sn, mac, req, now)
		if !ok {
			s.debug(ctx, "pool exhausted", m, peer)
			return resultDropped
		}
		r := s.newReply(l, m, dhcpv4.MessageTypeOffer)
		r.YourIPAddr = u32ToIP(ip)
		s.addNetwork(r, sn, true)
		s.addBoot(ctx, l, m, r, false)
		s.send(ctx, l, m, r, peer)
		return resultAnswered

	case dhcpv4.MessageTypeRequest:
		sid := m.ServerIdentifier()
		reqIP := m.RequestedIPAddress()
		var want uint32
		switch {
		case sid != nil:
			// SELECTING (RFC 2131 §4.3.2): the client names the server it
			// chose; any other server forgets its offer and stays silent.
			if !sid.Equal(l.serverIP) {
				for _, w := range s.table.forgetOffer(sn, mac) {
					s.store.in <- w
				}
				return resultIgnored
			}
			var ok bool
			if want, ok = ipToU32(reqIP); !ok {
				want, _ = ipToU32(m.ClientIPAddr)
			}
		case reqIP != nil:
			// INIT-REBOOT: the client verifies a remembered address.
			want, _ = ipToU32(reqIP)
		default:
			// RENEWING (unicast) or REBINDING (broadcast): ciaddr.
			want, _ = ipToU32(m.ClientIPAddr)
		}
		if want == 0 {
			return s.nak(ctx, l, m, peer, "no address requested")
		}
		lease, ws, ok := s.table.bind(sn, mac, want, now)
		if !ok {
			return s.nak(ctx, l, m, peer, "address not available to this client")
		}
		r := s.newReply(l, m, dhcpv4.MessageTypeAck)
		r.ClientIPAddr = m.ClientIPAddr
		r.YourIPAddr = u32ToIP(lease.ip)
		s.addNetwork(r, sn, true)
		s.addBoot(ctx, l, m, r, false)
		// The ACK leaves only after the lease is on disk: a crash between
		// the two costs the client a retransmission, never a lease it was
		// told it has.
		out := r.ToBytes()
		dst := s.destination(l, m, r, peer)
		last := len(ws) - 1
		for i, w := range ws {
			if i == last {
				w.done = func(err error) {
					if err != nil {
						s.log.Error("dhcp: lease commit failed, ACK not sent", "ip", u32ToIP(lease.ip), "err", err)
						s.count(m, resultDropped)
						return
					}
					s.count(m, resultAnswered)
					s.leased(m.ClientHWAddr, lease.ip)
					s.write(l, out, dst)
				}
			}
			s.store.in <- w
		}
		return ""

	case dhcpv4.MessageTypeRelease:
		ip, _ := ipToU32(m.ClientIPAddr)
		ws, ok := s.table.release(sn, mac, ip)
		if !ok {
			return resultIgnored
		}
		for _, w := range ws {
			s.store.in <- w
		}
		return resultDone

	case dhcpv4.MessageTypeDecline:
		ip, _ := ipToU32(m.RequestedIPAddress())
		ws, ok := s.table.decline(sn, mac, ip, now)
		if !ok {
			return resultIgnored
		}
		s.log.Info("dhcp: address declined", "ip", u32ToIP(ip), "mac", m.ClientHWAddr)
		for _, w := range ws {
			s.store.in <- w
		}
		return resultDone

	case dhcpv4.MessageTypeInform:
		// RFC 2131 §4.3.5: configuration only, no lease, no lease time.
		if m.ClientIPAddr.To4() == nil || m.ClientIPAddr.IsUnspecified() {
			return resultDropped
		}
		r := s.newReply(l, m, dhcpv4.MessageTypeAck)
		r.ClientIPAddr = m.ClientIPAddr
		s.addNetwork(r, sn, false)
		s.addBoot(ctx, l, m, r, false)
		s.send(ctx, l, m, r, peer)
		return resultAnswered
	}
	return resultIgnored
}

// proxy serves one request in proxyDHCP mode (PXE 2.1 §2.2.5): DISCOVER on
// port 67 gets an OFFER without an address; REQUEST and INFORM on port 4011
// get an ACK, unicast back to the client.
func (s *Server) proxy(ctx context.Context, l *listener, m *dhcpv4.DHCPv4, peer netip.AddrPort) string {
	c := clientOf(m)
	if !c.PXE && !c.HTTPBoot {
		return resultIgnored
	}
	var typ dhcpv4.MessageType
	switch mt := m.MessageType(); {
	case !l.pxe && mt == dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case l.pxe && (mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform):
		typ = dhcpv4.MessageTypeAck
	default:
		return resultIgnored
	}
	r := s.newReply(l, m, typ)
	if !s.addBoot(ctx, l, m, r, true) {
		return resultIgnored
	}
	if l.pxe {
		r.ClientIPAddr = m.ClientIPAddr
		if ip, ok := ipToU32(m.ClientIPAddr); ok && ip != 0 {
			s.leased(m.ClientHWAddr, ip)
		}
		s.write(l, r.ToBytes(), peer)
	} else {
		s.send(ctx, l, m, r, peer)
	}
	return resultAnswered
}

// leased tells the policy, if it listens, which address mac now has.
func (s *Server) leased(mac net.HardwareAddr, ip uint32) {
	if o, ok := s.policy.(LeaseObserver); ok {
		o.Leased(mac, netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}))
	}
}

// selectSubnet: the relay's subnet (giaddr, RFC 2131 §4.3.1), the subnet
// selection option (RFC 3011), the receiving interface's subnet, or for a
// client that has an address, the subnet of that address.
func (s *Server) selectSubnet(l *listener, m *dhcpv4.DHCPv4) *subnet {
	if g, ok := ipToU32(m.GatewayIPAddr); ok && g != 0 {
		return s.table.subnetOf(g)
	}
	if o := m.Options.Get(dhcpv4.OptionSubnetSelection); len(o) == 4 {
		return s.table.subnetOf(binary.BigEndian.Uint32(o))
	}
	if len(l.local) > 0 {
		return l.local[0]
	}
	if c, ok := ipToU32(m.ClientIPAddr); ok && c != 0 {
		return s.table.subnetOf(c)
	}
	return nil
}

func (s *Server) nak(ctx context.Context, l *listener, m *dhcpv4.DHCPv4, peer netip.AddrPort, why string) string {
	s.debug(ctx, "NAK: "+why, m, peer)
	r := s.newReply(l, m, dhcpv4.MessageTypeNak)
	r.UpdateOption(dhcpv4.OptMessage(why))
	if !r.GatewayIPAddr.IsUnspecified() {
		// RFC 2131 §4.3.2: a relay must broadcast the NAK.
		r.SetBroadcast()
	}
	s.send(ctx, l, m, r, peer)
	return resultNAK
}

func (s *Server) debug(ctx context.Context, msg string, m *dhcpv4.DHCPv4, peer netip.AddrPort) {
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("dhcp: "+msg, "type", m.MessageType().String(), "mac", m.ClientHWAddr, "from", peer, "giaddr", m.GatewayIPAddr)
	}
}

// newReply fills the fixed fields of RFC 2131 §4.3.1 Table 3.
func (s *Server) newReply(l *listener, m *dhcpv4.DHCPv4, typ dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        m.HWType,
		TransactionID: m.TransactionID,
		Flags:         m.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: m.GatewayIPAddr,
		ClientHWAddr:  m.ClientHWAddr,
		Options:       make(dhcpv4.Options, 12),
	}
	r.UpdateOption(dhcpv4.OptMessageType(typ))
	r.UpdateOption(dhcpv4.OptServerIdentifier(l.serverIP))
	// RFC 3046 §2.2 (relay agent information) and RFC 6842 (client
	// identifier) are echoed as received.
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionRelayAgentInformation, dhcpv4.OptionClientIdentifier} {
		if v := m.Options.Get(code); v != nil {
			r.Options[code.Code()] = v
		}
	}
	return r
}

// addNetwork adds the subnet's configuration; withLease adds the lease time
// and the renewal (T1 = 1/2) and rebinding (T2 = 7/8) times of RFC 2131 §4.4.5.
func (s *Server) addNetwork(r *dhcpv4.DHCPv4, sn *subnet, withLease bool) {
	// The encoded options are shared, read-only, by every reply.
	for _, o := range sn.netOpts {
		r.Options[o.Code.Code()] = o.Value.ToBytes()
	}
	if withLease {
		for _, o := range sn.leaseOpts {
			r.Options[o.Code.Code()] = o.Value.ToBytes()
		}
	}
}

// addBoot asks the policy and writes its answer into r. It reports whether
// there was boot information to send.
func (s *Server) addBoot(ctx context.Context, l *listener, m *dhcpv4.DHCPv4, r *dhcpv4.DHCPv4, proxy bool) bool {
	if s.policy == nil {
		return false
	}
	c := clientOf(m)
	pctx, cancel := context.WithTimeout(ctx, policyTimeout)
	b, err := s.policy.Boot(pctx, c)
	cancel()
	if err != nil {
		s.log.Warn("dhcp: boot policy failed", "mac", c.MAC, "err", err)
		return false
	}
	if !proxy {
		// Added last, after the boot options, so the size check below
		// sees the whole reply.
		defer s.addHints(m, r, b.Hints)
	}
	if b.zero() {
		return false
	}
	next := b.ServerIP.To4()
	if next == nil {
		next = l.serverIP
	}
	// An HTTP URL goes to UEFI HTTP boot clients (UEFI 2.10 §24.7.2) and to
	// iPXE, which takes a URL as its filename; everyone else needs TFTP.
	ipxe := strings.Contains(c.UserClass, "iPXE")
	switch {
	case b.HTTPURL != "" && (c.HTTPBoot || ipxe):
		r.ServerIPAddr = next
		r.BootFileName = fileField(b.HTTPURL)
		r.UpdateOption(dhcpv4.OptBootFileName(b.HTTPURL))
		if c.HTTPBoot {
			// UEFI HTTP boot only takes offers that echo the class.
			r.UpdateOption(dhcpv4.OptClassIdentifier(vendorHTTP))
		}
	case b.TFTPFile != "":
		r.ServerIPAddr = next
		r.BootFileName = fileField(b.TFTPFile)
		r.UpdateOption(dhcpv4.OptTFTPServerName(next.String()))
		r.UpdateOption(dhcpv4.OptBootFileName(b.TFTPFile))
		if c.PXE {
			// PXE 2.1 §2.2.5 and §2.4.5.2: a PXE offer carries class
			// "PXEClient" and vendor options; PXE_DISCOVERY_CONTROL
			// (sub-option 6) bit 3 says the boot file in this offer is the
			// answer, with no boot server discovery round.
			r.UpdateOption(dhcpv4.OptClassIdentifier(vendorPXE))
			r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
		}
	default:
		return false
	}
	if proxy {
		// PXE 2.1 §2.2.5: the proxy's answer echoes the client UUID.
		if u := m.Options.Get(dhcpv4.OptionClientMachineIdentifier); u != nil {
			r.Options[dhcpv4.OptionClientMachineIdentifier.Code()] = u
		}
	}
	return true
}

// addHints adds option OptionHints to an authoritative reply when the
// client asked for it in its parameter request list (option 55): RFC 2132
// §9.8 lets a server send only what was asked for, and a firmware that did
// not ask has no use for it. Text over 255 bytes goes out as several
// instances of the option (RFC 3396 §5; dhcpv4's encoder splits). A reply
// that would outgrow what the client accepts (option 57, at least 576
// octets of IP datagram, RFC 2132 §9.10) loses the hints, not the lease.
//
// Proxy replies never carry hints: a proxy answers only boot firmware, and
// the booted OS gets its lease from the site's DHCP server, so there the
// hints come from the UKI's cmdline (palisade.keyd=, palisade.cluster=) or
// from the site's DHCP server sending option 224.
func (s *Server) addHints(m, r *dhcpv4.DHCPv4, hints []byte) {
	// Not dhcpv4's IsOptionRequested: it counts a missing list as asking
	// for everything.
	if len(hints) == 0 || bytes.IndexByte(m.Options.Get(dhcpv4.OptionParameterRequestList), OptionHints) < 0 {
		return
	}
	r.Options[OptionHints] = hints
	limit := 576
	if v, err := m.MaxMessageSize(); err == nil && int(v) > limit {
		limit = int(v)
	}
	// 28 = IPv4 and UDP headers: the limit counts the IP datagram.
	if len(r.ToBytes())+28 > limit {
		delete(r.Options, OptionHints)
		s.met.hints.WithLabelValues("too_large").Inc()
		s.log.Warn("dhcp: keyd hints left out, the reply would exceed the client's maximum message size",
			"mac", m.ClientHWAddr, "max", limit, "hints_bytes", len(hints))
		return
	}
	s.met.hints.WithLabelValues("sent").Inc()
}

// fileField is what goes into the 128-byte file field: the name when it
// fits (with its NUL), else nothing, since a cut name would be loaded as is;
// option 67 always carries the whole name (RFC 2132 §9.5).
func fileField(name string) string {
	if len(name) > 127 {
		return ""
	}
	return name
}

// destination applies RFC 2131 §4.1: to the relay (giaddr, server port); to
// a client that has an address (ciaddr) except for NAKs; else broadcast on
// the interface. A socket without an interface cannot broadcast to the
// link, so it answers where the request came from.
func (s *Server) destination(l *listener, m, r *dhcpv4.DHCPv4, peer netip.AddrPort) netip.AddrPort {
	if g, ok := netip.AddrFromSlice(m.GatewayIPAddr.To4()); ok && !g.IsUnspecified() {
		if peer.Addr().Unmap() == g {
			return peer
		}
		return netip.AddrPortFrom(g, serverPort)
	}
	if c, ok := netip.AddrFromSlice(m.ClientIPAddr.To4()); ok && !c.IsUnspecified() && r.MessageType() != dhcpv4.MessageTypeNak {
		if peer.Addr().Unmap() == c {
			return peer
		}
		return netip.AddrPortFrom(c, clientPort)
	}
	if l.iface == "" {
		return peer
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), clientPort)
}

func (s *Server) send(ctx context.Context, l *listener, m, r *dhcpv4.DHCPv4, peer netip.AddrPort) {
	s.write(l, r.ToBytes(), s.destination(l, m, r, peer))
}

func (s *Server) write(l *listener, b []byte, dst netip.AddrPort) {
	if _, err := l.conn.WriteToUDPAddrPort(b, dst); err != nil {
		s.log.Debug("dhcp: send failed", "to", dst, "err", err)
	}
}
