package meshd

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Link configures the WireGuard interface's addresses, MTU and state through
// rtnetlink (RFC 3549; linux/rtnetlink.h). It only adds: an address that is
// already there is left in place, so re-applying never flaps the interface.
type Link struct {
	// NetNS is a network namespace file descriptor to operate in
	// (0: the caller's; tests use their own namespaces).
	NetNS int
}

// Configure sets mtu (0: leave), adds addrs and brings ifname up.
func (l Link) Configure(ifname string, addrs []netip.Prefix, mtu int) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: l.NetNS})
	if err != nil {
		return fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	idx, err := linkIndex(c, ifname)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if err := addAddr(c, idx, a); err != nil {
			return fmt.Errorf("interface %s: add address %v: %w", ifname, a, err)
		}
	}
	ae := netlink.NewAttributeEncoder()
	if mtu > 0 {
		ae.Uint32(unix.IFLA_MTU, uint32(mtu))
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	// struct ifinfomsg: family, pad, type, index, flags, change.
	msg := make([]byte, unix.SizeofIfInfomsg)
	nativePutUint32(msg[4:], uint32(idx))
	nativePutUint32(msg[8:], unix.IFF_UP)
	nativePutUint32(msg[12:], unix.IFF_UP)
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_NEWLINK, Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(msg, attrs...),
	})
	if err != nil {
		return fmt.Errorf("interface %s: set mtu %d and up: %w", ifname, mtu, err)
	}
	return nil
}

func linkIndex(c *netlink.Conn, ifname string) (int, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, ifname)
	attrs, err := ae.Encode()
	if err != nil {
		return 0, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   append(make([]byte, unix.SizeofIfInfomsg), attrs...),
	})
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", ifname, err)
	}
	if len(msgs) != 1 || len(msgs[0].Data) < unix.SizeofIfInfomsg {
		return 0, fmt.Errorf("interface %s: unexpected rtnetlink answer", ifname)
	}
	return int(int32(nativeUint32(msgs[0].Data[4:]))), nil
}

func addAddr(c *netlink.Conn, idx int, p netip.Prefix) error {
	fam := unix.AF_INET6
	if p.Addr().Is4() {
		fam = unix.AF_INET
	}
	// struct ifaddrmsg: family, prefixlen, flags, scope, index.
	msg := make([]byte, unix.SizeofIfAddrmsg)
	msg[0], msg[1] = byte(fam), byte(p.Bits())
	nativePutUint32(msg[4:], uint32(idx))
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(unix.IFA_LOCAL, p.Addr().AsSlice())
	ae.Bytes(unix.IFA_ADDRESS, p.Addr().AsSlice())
	if fam == unix.AF_INET6 {
		// No duplicate address detection: the address is keyd's
		// allocation, unique in the cluster, and DAD would delay use by
		// about a second (RFC 4862 §5.4).
		ae.Uint32(unix.IFA_FLAGS, unix.IFA_F_NODAD)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_NEWADDR, Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Replace},
		Data:   append(msg, attrs...),
	})
	var oe *netlink.OpError
	if errors.As(err, &oe) && errors.Is(oe.Err, unix.EEXIST) {
		return nil
	}
	return err
}

// CreateWireGuard creates a kernel WireGuard interface named ifname
// (rtnetlink RTM_NEWLINK, IFLA_INFO_KIND "wireguard"); an existing one is kept
// as it is, so a restarted meshd does not flap the mesh.
func (l Link) CreateWireGuard(ifname string) error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: l.NetNS})
	if err != nil {
		return fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.IFLA_IFNAME, ifname)
	ae.Nested(unix.IFLA_LINKINFO, func(n *netlink.AttributeEncoder) error {
		n.String(unix.IFLA_INFO_KIND, "wireguard")
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_NEWLINK, Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl},
		Data:   append(make([]byte, unix.SizeofIfInfomsg), attrs...),
	})
	var oe *netlink.OpError
	if errors.As(err, &oe) && errors.Is(oe.Err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create WireGuard interface %s: %w", ifname, err)
	}
	return nil
}
