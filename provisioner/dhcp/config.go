package dhcp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Modes of operation.
const (
	// ModeAuthoritative hands out addresses from per-subnet pools and keeps
	// leases durable (RFC 2131).
	ModeAuthoritative = "authoritative"
	// ModeProxy answers only PXE and HTTP boot clients, with boot information
	// and no address (PXE 2.1 §2.2.5, proxyDHCP), on port 67 and 4011.
	ModeProxy = "proxy"
)

// Config is the DHCP server's part of the provisioner configuration. Durations
// are Go duration strings ("12h"); zero values take the defaults named on each
// field.
type Config struct {
	// Mode is "authoritative" or "proxy".
	Mode string `json:"mode"`
	// Interfaces to serve, by name. Each gets its own sockets bound with
	// SO_BINDTODEVICE, so nothing is answered on any other interface. In
	// authoritative mode each must carry an IPv4 address inside a configured
	// subnet, or New refuses to start.
	Interfaces []string `json:"interfaces,omitempty"`
	// Listen is an optional extra UDP address ("127.0.0.1:6767") served
	// without an interface: only unicast and relayed requests reach it.
	Listen string `json:"listen,omitempty"`
	// PXEListen is, in proxy mode, the UDP address of the boot server
	// discovery service for Listen (default: Listen's IP, port 4011). On
	// Interfaces port 4011 is always served in proxy mode.
	PXEListen string `json:"pxe_listen,omitempty"`
	// ServerIP overrides the server identifier and the default next-server
	// address; default: the receiving interface's address.
	ServerIP string `json:"server_ip,omitempty"`
	// LeaseDB is the bbolt file that holds the leases (authoritative mode).
	LeaseDB string `json:"lease_db,omitempty"`
	// OfferHold is how long an offered address stays reserved for the client
	// it was offered to (default 30s). Offers are not written to disk.
	OfferHold string `json:"offer_hold,omitempty"`
	// DeclineHold is how long an address a client declined (RFC 2131 §4.3.3)
	// stays out of the pool (default 1h).
	DeclineHold string `json:"decline_hold,omitempty"`
	// MaxBatch caps how many lease writes share one commit (default 1024).
	MaxBatch int `json:"max_batch,omitempty"`
	// Subnets served in authoritative mode.
	Subnets []Subnet `json:"subnets,omitempty"`
}

// Subnet is one IPv4 subnet with a dynamic range.
type Subnet struct {
	CIDR       string   `json:"cidr"`
	RangeStart string   `json:"range_start"`
	RangeEnd   string   `json:"range_end"`
	Router     string   `json:"router,omitempty"`
	DNS        []string `json:"dns,omitempty"`
	Domain     string   `json:"domain,omitempty"`
	// LeaseTime defaults to 12h.
	LeaseTime    string        `json:"lease_time,omitempty"`
	Reservations []Reservation `json:"reservations,omitempty"`
}

// Reservation pins a MAC address to one address of the subnet.
type Reservation struct {
	MAC string `json:"mac"`
	IP  string `json:"ip"`
}

const (
	defaultOfferHold   = 30 * time.Second
	defaultDeclineHold = time.Hour
	defaultLeaseTime   = 12 * time.Hour
	defaultMaxBatch    = 1024
	// PXEPort is the PXE boot server discovery port (PXE 2.1 §2.2.5).
	PXEPort = 4011
)

// Validate checks the configuration and names the first bad field.
func (c Config) Validate() error {
	_, err := compile(c)
	return err
}

// compiled is a validated Config in the forms the server uses.
type compiled struct {
	mode        string
	interfaces  []string
	listen      *net.UDPAddr
	pxeListen   *net.UDPAddr
	serverIP    net.IP
	leaseDB     string
	offerHold   time.Duration
	declineHold time.Duration
	maxBatch    int
	subnets     []*subnet
}

type subnet struct {
	idx        int
	prefix     netip.Prefix
	mask       net.IPMask
	start, end uint32
	router     net.IP
	dns        []net.IP
	domain     string
	leaseTime  time.Duration
	// reserved maps a MAC (string of its bytes) to its address, and back.
	reservedByMAC map[string]uint32
	reservedByIP  map[uint32]string
	// netOpts (mask, router, DNS, domain) and leaseOpts (RFC 2131 §4.4.5
	// lease time, T1 = 1/2, T2 = 7/8) are encoded once.
	netOpts, leaseOpts []dhcpv4.Option
}

// rawOpt is an option value already in wire form.
type rawOpt []byte

func (r rawOpt) ToBytes() []byte { return r }
func (r rawOpt) String() string  { return fmt.Sprintf("%x", []byte(r)) }

func frozen(o dhcpv4.Option) dhcpv4.Option {
	return dhcpv4.Option{Code: o.Code, Value: rawOpt(o.Value.ToBytes())}
}

func (s *subnet) encodeOptions() {
	s.netOpts = []dhcpv4.Option{frozen(dhcpv4.OptSubnetMask(s.mask))}
	if s.router != nil {
		s.netOpts = append(s.netOpts, frozen(dhcpv4.OptRouter(s.router)))
	}
	if len(s.dns) > 0 {
		s.netOpts = append(s.netOpts, frozen(dhcpv4.OptDNS(s.dns...)))
	}
	if s.domain != "" {
		s.netOpts = append(s.netOpts, frozen(dhcpv4.OptDomainName(s.domain)))
	}
	s.leaseOpts = []dhcpv4.Option{
		frozen(dhcpv4.OptIPAddressLeaseTime(s.leaseTime)),
		frozen(dhcpv4.OptRenewTimeValue(s.leaseTime / 2)),
		frozen(dhcpv4.OptRebindingTimeValue(s.leaseTime * 7 / 8)),
	}
}

func (s *subnet) contains(ip uint32) bool {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], ip)
	return s.prefix.Contains(netip.AddrFrom4(b))
}

func (s *subnet) inRange(ip uint32) bool { return ip >= s.start && ip <= s.end }

func parseDur(field, v string, def time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (e.g. \"12h\"): %v", field, v, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s: %q must be positive", field, v)
	}
	return d, nil
}

func parseV4(field, v string) (uint32, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("%s: %q is not an IPv4 address", field, v)
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:]), nil
}

func u32ToIP(v uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return ip
}

func ipToU32(ip net.IP) (uint32, bool) {
	ip4 := ip.To4()
	if ip4 == nil {
		return 0, false
	}
	return binary.BigEndian.Uint32(ip4), true
}

func compile(c Config) (*compiled, error) {
	out := &compiled{mode: c.Mode, leaseDB: c.LeaseDB}
	switch c.Mode {
	case ModeAuthoritative, ModeProxy:
	default:
		return nil, fmt.Errorf("mode: %q is not one of %q, %q", c.Mode, ModeAuthoritative, ModeProxy)
	}
	if len(c.Interfaces) == 0 && c.Listen == "" {
		return nil, fmt.Errorf("interfaces: empty and listen unset: nothing to serve")
	}
	seen := map[string]bool{}
	for i, name := range c.Interfaces {
		if name == "" || len(name) >= 16 || bytes.ContainsAny([]byte(name), "/ \x00") {
			return nil, fmt.Errorf("interfaces[%d]: %q is not an interface name", i, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("interfaces[%d]: %q listed twice", i, name)
		}
		seen[name] = true
	}
	out.interfaces = append([]string(nil), c.Interfaces...)
	resolve := func(field, v string) (*net.UDPAddr, error) {
		ap, err := netip.ParseAddrPort(v)
		if err != nil || !ap.Addr().Is4() {
			return nil, fmt.Errorf("%s: %q is not an IPv4 address:port", field, v)
		}
		return net.UDPAddrFromAddrPort(ap), nil
	}
	var err error
	if c.Listen != "" {
		if out.listen, err = resolve("listen", c.Listen); err != nil {
			return nil, err
		}
	}
	if c.PXEListen != "" {
		if c.Mode != ModeProxy {
			return nil, fmt.Errorf("pxe_listen: only used in mode %q", ModeProxy)
		}
		if out.listen == nil {
			return nil, fmt.Errorf("pxe_listen: set without listen")
		}
		if out.pxeListen, err = resolve("pxe_listen", c.PXEListen); err != nil {
			return nil, err
		}
	} else if c.Mode == ModeProxy && out.listen != nil {
		out.pxeListen = &net.UDPAddr{IP: out.listen.IP, Port: PXEPort}
	}
	if c.ServerIP != "" {
		v, err := parseV4("server_ip", c.ServerIP)
		if err != nil {
			return nil, err
		}
		out.serverIP = u32ToIP(v)
	}
	if out.offerHold, err = parseDur("offer_hold", c.OfferHold, defaultOfferHold); err != nil {
		return nil, err
	}
	if out.declineHold, err = parseDur("decline_hold", c.DeclineHold, defaultDeclineHold); err != nil {
		return nil, err
	}
	out.maxBatch = c.MaxBatch
	if out.maxBatch == 0 {
		out.maxBatch = defaultMaxBatch
	}
	if out.maxBatch < 0 {
		return nil, fmt.Errorf("max_batch: %d must be positive", c.MaxBatch)
	}
	if c.Mode == ModeProxy {
		if len(c.Subnets) != 0 {
			return nil, fmt.Errorf("subnets: must be empty in mode %q (proxyDHCP hands out no addresses)", ModeProxy)
		}
		return out, nil
	}
	if c.LeaseDB == "" {
		return nil, fmt.Errorf("lease_db: required in mode %q", ModeAuthoritative)
	}
	if len(c.Subnets) == 0 {
		return nil, fmt.Errorf("subnets: at least one required in mode %q", ModeAuthoritative)
	}
	for i, sc := range c.Subnets {
		f := func(name string) string { return fmt.Sprintf("subnets[%d].%s", i, name) }
		p, err := netip.ParsePrefix(sc.CIDR)
		if err != nil || !p.Addr().Is4() {
			return nil, fmt.Errorf("%s: %q is not an IPv4 CIDR", f("cidr"), sc.CIDR)
		}
		if p.Bits() > 30 {
			return nil, fmt.Errorf("%s: %q has no room for a pool (prefix longer than /30)", f("cidr"), sc.CIDR)
		}
		p = p.Masked()
		s := &subnet{idx: i, prefix: p, mask: net.CIDRMask(p.Bits(), 32),
			reservedByMAC: map[string]uint32{}, reservedByIP: map[uint32]string{}}
		for _, o := range out.subnets {
			if o.prefix.Overlaps(p) {
				return nil, fmt.Errorf("%s: %s overlaps subnets[%d] %s", f("cidr"), p, o.idx, o.prefix)
			}
		}
		base := p.Addr().As4()
		network := binary.BigEndian.Uint32(base[:])
		bcast := network | ^binary.BigEndian.Uint32(s.mask)
		inner := func(field, v string) (uint32, error) {
			ip, err := parseV4(f(field), v)
			if err != nil {
				return 0, err
			}
			if !s.contains(ip) || ip == network || ip == bcast {
				return 0, fmt.Errorf("%s: %s is not a host address of %s", f(field), v, p)
			}
			return ip, nil
		}
		if s.start, err = inner("range_start", sc.RangeStart); err != nil {
			return nil, err
		}
		if s.end, err = inner("range_end", sc.RangeEnd); err != nil {
			return nil, err
		}
		if s.end < s.start {
			return nil, fmt.Errorf("%s: %s is below range_start %s", f("range_end"), sc.RangeEnd, sc.RangeStart)
		}
		if sc.Router != "" {
			r, err := inner("router", sc.Router)
			if err != nil {
				return nil, err
			}
			s.router = u32ToIP(r)
		}
		for j, d := range sc.DNS {
			v, err := parseV4(f(fmt.Sprintf("dns[%d]", j)), d)
			if err != nil {
				return nil, err
			}
			s.dns = append(s.dns, u32ToIP(v))
		}
		if len(sc.Domain) > 255 {
			return nil, fmt.Errorf("%s: longer than 255 bytes", f("domain"))
		}
		s.domain = sc.Domain
		if s.leaseTime, err = parseDur(f("lease_time"), sc.LeaseTime, defaultLeaseTime); err != nil {
			return nil, err
		}
		if s.leaseTime > 100*365*24*time.Hour {
			return nil, fmt.Errorf("%s: %q is too long", f("lease_time"), sc.LeaseTime)
		}
		for j, r := range sc.Reservations {
			rf := func(name string) string { return f(fmt.Sprintf("reservations[%d].%s", j, name)) }
			mac, err := net.ParseMAC(r.MAC)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not a MAC address", rf("mac"), r.MAC)
			}
			ip, err := inner(fmt.Sprintf("reservations[%d].ip", j), r.IP)
			if err != nil {
				return nil, err
			}
			if _, ok := s.reservedByMAC[string(mac)]; ok {
				return nil, fmt.Errorf("%s: %s reserved twice in this subnet", rf("mac"), mac)
			}
			if _, ok := s.reservedByIP[ip]; ok {
				return nil, fmt.Errorf("%s: %s reserved twice", rf("ip"), r.IP)
			}
			s.reservedByMAC[string(mac)] = ip
			s.reservedByIP[ip] = string(mac)
		}
		s.encodeOptions()
		out.subnets = append(out.subnets, s)
	}
	return out, nil
}
