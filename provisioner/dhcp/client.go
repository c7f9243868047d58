package dhcp

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Client describes the machine behind one request, as the Policy sees it.
type Client struct {
	MAC net.HardwareAddr
	// UUID is option 97 (RFC 4578 §2.3) without its type byte.
	UUID []byte
	// Arch is the first entry of option 93 (RFC 4578 §2.1; IANA "Processor
	// Architecture Types": 0 BIOS, 7/9 x64 UEFI, 11 arm64 UEFI, 16 x64 HTTP,
	// 19 arm64 HTTP).
	Arch uint16
	// VendorClass is option 60.
	VendorClass string
	// UserClass is option 77 (RFC 3004), classes joined with ","; iPXE sends
	// a bare string, which is taken as it is.
	UserClass string
	// Relay is giaddr, nil when the request was not relayed.
	Relay net.IP
	// PXE is set when option 60 starts with "PXEClient".
	PXE bool
	// HTTPBoot is set when option 60 starts with "HTTPClient" (UEFI 2.5+
	// §24.7 HTTP Boot).
	HTTPBoot bool
	// MessageType is DISCOVER, REQUEST, INFORM, ...
	MessageType string
}

// Boot is the boot answer for one client. The zero value sends no boot
// information.
type Boot struct {
	// TFTPFile is a path under the TFTP root, for PXEClient.
	TFTPFile string
	// HTTPURL is the full URL, for HTTPClient.
	HTTPURL string
	// ServerIP is next-server (siaddr); nil means the listening address.
	ServerIP net.IP
	// Hints is the value of option OptionHints for this client, whether or
	// not it network-boots: in authoritative mode it is sent in OFFER and
	// ACK when the client's parameter request list asks for the option.
	// Proxy mode never sends it (see Server).
	Hints []byte
}

// OptionHints carries the node's keyd addresses and cluster ID, as text
// ("keyd=HOST:PORT[,HOST:PORT…] cluster=ID"). 224 is the first
// site-specific option (RFC 3942 §4); the node's init asks for it in its
// parameter request list.
const OptionHints = 224

func (b Boot) zero() bool { return b.TFTPFile == "" && b.HTTPURL == "" && b.ServerIP == nil }

// Policy decides what a client boots. The provisioner's inventory implements
// it; it is called for every request that could carry boot information.
type Policy interface {
	Boot(ctx context.Context, c Client) (Boot, error)
}

// LeaseObserver, if the Policy also implements it, hears the address of
// every client the server acknowledged: an authoritative lease once it is
// durable and before its ACK leaves, or the address a proxyDHCP client
// reports (ciaddr) on port 4011. The boot servers' transfers come from that
// address, so they can be attributed to the machine exactly. It must not
// block.
type LeaseObserver interface {
	Leased(mac net.HardwareAddr, ip netip.Addr)
}

const (
	vendorPXE  = "PXEClient"
	vendorHTTP = "HTTPClient"
)

// clientOf extracts the Policy's view of a request.
func clientOf(m *dhcpv4.DHCPv4) Client {
	c := Client{
		MAC:         append(net.HardwareAddr(nil), m.ClientHWAddr...),
		VendorClass: m.ClassIdentifier(),
		MessageType: m.MessageType().String(),
	}
	if g := m.GatewayIPAddr.To4(); g != nil && !g.IsUnspecified() {
		c.Relay = append(net.IP(nil), g...)
	}
	c.PXE = strings.HasPrefix(c.VendorClass, vendorPXE)
	c.HTTPBoot = strings.HasPrefix(c.VendorClass, vendorHTTP)
	// RFC 4578 §2.1: a list of 16-bit types; the first is the client's
	// preference.
	if a := m.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(a) >= 2 {
		c.Arch = binary.BigEndian.Uint16(a)
	}
	// RFC 4578 §2.3: type 0 followed by a 16-byte UUID.
	if u := m.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(u) == 17 && u[0] == 0 {
		c.UUID = append([]byte(nil), u[1:]...)
	}
	c.UserClass = userClass(m.Options.Get(dhcpv4.OptionUserClassInformation))
	return c
}

// userClass decodes option 77 as RFC 3004 §4 (length-prefixed classes) when
// the bytes are exactly that, else as one bare string (iPXE, Microsoft).
func userClass(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var parts []string
	for rest := b; len(rest) > 0; {
		n := int(rest[0])
		if n == 0 || n+1 > len(rest) {
			return string(b)
		}
		parts = append(parts, string(rest[1:1+n]))
		rest = rest[1+n:]
	}
	return strings.Join(parts, ",")
}
