// Package pxetest simulates UEFI machines booting over the network — PXE
// (broadcast DHCP, then TFTP) and UEFI HTTP boot — for the provisioner's
// tests and its boot-storm benchmark, which share it.
//
// It is not firmware and not a DHCP client library: it does what UEFI
// firmware does on the wire, and records what it saw.
package pxetest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"

	"github.com/palisade-cc/palisade/provisioner/tftp"
)

// Vendor classes as UEFI firmware sends them (UEFI 2.x §24.3.1 / PXE 2.1
// option 60: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"; HTTP boot uses HTTPClient).
const (
	VendorPXE  = "PXEClient:Arch:00007:UNDI:003016"
	VendorHTTP = "HTTPClient:Arch:00016:UNDI:003001"
)

// Socket is one UDP :68 socket shared by every simulated client, bound
// to one interface with SO_BINDTODEVICE (like perfdhcp, many clients share
// a socket; answers are demultiplexed by xid). Replies come as broadcasts to
// 255.255.255.255:68 (RFC 2131 §4.1: clients without an address).
type Socket struct {
	conn *net.UDPConn
	mu   sync.Mutex
	wait map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
}

// Listen opens the shared client socket on iface (root: SO_BINDTODEVICE
// and port 68).
func Listen(ctx context.Context, iface string) (*Socket, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface); serr != nil {
				serr = fmt.Errorf("SO_BINDTODEVICE %s: %w", iface, serr)
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				serr = fmt.Errorf("SO_BROADCAST: %w", serr)
				return
			}
			// A storm's answers arrive in bursts; the kernel drops what
			// does not fit (FORCE needs CAP_NET_ADMIN, which the
			// namespace-creating root has).
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", "0.0.0.0:68")
	if err != nil {
		return nil, fmt.Errorf("dhcp client socket on %s: %w", iface, err)
	}
	s := &Socket{conn: pc.(*net.UDPConn), wait: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}}
	go s.read()
	return s, nil
}

// Close closes the socket.
func (s *Socket) Close() error { return s.conn.Close() }

func (s *Socket) read() {
	buf := make([]byte, 1500)
	for {
		n, _, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		s.mu.Lock()
		ch := s.wait[m.TransactionID]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default: // a duplicate the client is not waiting for
			}
		}
	}
}

// Exchange broadcasts m and waits for a reply of type want with m's xid and
// chaddr, retransmitting with the RFC 2131 §4.1 backoff (first wait
// `first`, doubling) at most tries times.
func (s *Socket) Exchange(ctx context.Context, m *dhcpv4.DHCPv4, want dhcpv4.MessageType, first time.Duration, tries int) (*dhcpv4.DHCPv4, int, error) {
	ch := make(chan *dhcpv4.DHCPv4, 4)
	s.mu.Lock()
	s.wait[m.TransactionID] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.wait, m.TransactionID)
		s.mu.Unlock()
	}()
	dst := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
	wait := first
	for try := 1; try <= tries; try++ {
		if _, err := s.conn.WriteToUDP(m.ToBytes(), dst); err != nil {
			return nil, try, fmt.Errorf("send %s: %w", m.MessageType(), err)
		}
		t := time.NewTimer(wait)
	recv:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, try, ctx.Err()
			case r := <-ch:
				if r.MessageType() == dhcpv4.MessageTypeNak {
					t.Stop()
					return nil, try, fmt.Errorf("NAK to %s: %s", m.MessageType(), r.Message())
				}
				if r.MessageType() == want && net.HardwareAddr(r.ClientHWAddr).String() == net.HardwareAddr(m.ClientHWAddr).String() {
					t.Stop()
					return r, try, nil
				}
			case <-t.C:
				break recv
			}
		}
		wait *= 2
	}
	return nil, tries, fmt.Errorf("no %s after %d %s", want, tries, m.MessageType())
}

// Machine is one simulated UEFI machine.
type Machine struct {
	MAC  net.HardwareAddr
	UUID [16]byte
	HTTP bool // UEFI HTTP boot (arch 16, HTTPClient) instead of PXE (arch 7, PXEClient)
}

// NewMachine returns machine number i: MAC 02:53:xx:xx:xx:xx and a
// version-4-shaped UUID, both derived from i, so runs are reproducible.
func NewMachine(i int, http bool) Machine {
	c := Machine{MAC: net.HardwareAddr{0x02, 0x53, 0, 0, 0, 0}, HTTP: http}
	binary.BigEndian.PutUint32(c.MAC[2:], uint32(i))
	binary.BigEndian.PutUint32(c.UUID[:], 0x53746f72) // "Stor"
	binary.BigEndian.PutUint32(c.UUID[12:], uint32(i))
	c.UUID[6] = 0x40
	c.UUID[8] = 0x80
	return c
}

// Modifiers are the options the machine's firmware sends.
func (c Machine) Modifiers() []dhcpv4.Modifier {
	arch, vendor := iana.EFI_X86_64, VendorPXE
	if c.HTTP {
		arch, vendor = iana.EFI_X86_64_HTTP, VendorHTTP
	}
	return []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendor)),
		// Option 97: type 0 then the 16-byte UUID (RFC 4578 §2.5).
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, c.UUID[:]...))),
	}
}

// DORA runs DISCOVER/OFFER/REQUEST/ACK with first as the first
// retransmission timeout and at most tries sends per message. It returns
// the ACK, the number of retransmissions, and on failure the stage that
// failed (dhcp-offer, dhcp-ack).
func (c Machine) DORA(ctx context.Context, s *Socket, first time.Duration, tries int) (ack *dhcpv4.DHCPv4, retries int, stage string, err error) {
	d, err := dhcpv4.NewDiscovery(c.MAC, c.Modifiers()...)
	if err != nil {
		return nil, 0, "dhcp-offer", err
	}
	offer, n, err := s.Exchange(ctx, d, dhcpv4.MessageTypeOffer, first, tries)
	retries += n - 1
	if err != nil {
		return nil, retries, "dhcp-offer", err
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, c.Modifiers()...)
	if err != nil {
		return nil, retries, "dhcp-ack", err
	}
	ack, n, err = s.Exchange(ctx, req, dhcpv4.MessageTypeAck, first, tries)
	retries += n - 1
	if err != nil {
		return nil, retries, "dhcp-ack", err
	}
	return ack, retries, "", nil
}

// Fetched is the boot file a machine downloaded.
type Fetched struct {
	File   string
	Next   netip.Addr // siaddr, TFTP only
	Bytes  int64
	SHA256 [32]byte
}

// Fetch downloads the file the ACK names, as the firmware would: over TFTP
// from siaddr:69 with o, or the HTTP URL with hc — only when the ACK says
// HTTPClient in option 60 (UEFI 2.x §24.7.2: the firmware ignores an HTTP
// boot answer without it). On failure it returns the stage (boot-answer,
// tftp, http).
func (c Machine) Fetch(ctx context.Context, ack *dhcpv4.DHCPv4, o tftp.ClientOptions, hc *http.Client) (f Fetched, stage string, err error) {
	f.File = ack.BootFileName
	if f.File == "" {
		return f, "boot-answer", errors.New("ACK carries no boot file")
	}
	h := sha256.New()
	cw := &countingWriter{h: h}
	defer func() { f.Bytes = cw.n; copy(f.SHA256[:], h.Sum(nil)) }()
	if c.HTTP {
		if ack.ClassIdentifier() != "HTTPClient" {
			return f, "boot-answer", fmt.Errorf("HTTP boot ACK has option 60 %q, want HTTPClient", ack.ClassIdentifier())
		}
		if err := httpGet(ctx, hc, f.File, cw); err != nil {
			return f, "http", err
		}
		return f, "", nil
	}
	next, ok := netip.AddrFromSlice(ack.ServerIPAddr.To4())
	if !ok || next.IsUnspecified() {
		return f, "boot-answer", errors.New("ACK carries no next-server (siaddr)")
	}
	f.Next = next
	if _, err := tftp.Get(ctx, netip.AddrPortFrom(next, 69), f.File, cw, o); err != nil {
		return f, "tftp", err
	}
	return f, "", nil
}

func httpGet(ctx context.Context, c *http.Client, url string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

type countingWriter struct {
	h hash.Hash
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.h.Write(p)
}
