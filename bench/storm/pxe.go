package main

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
	vendorPXE  = "PXEClient:Arch:00007:UNDI:003016"
	vendorHTTP = "HTTPClient:Arch:00016:UNDI:003001"
)

// dhcpSocket is one UDP :68 socket shared by every simulated client, bound
// to one interface with SO_BINDTODEVICE (like perfdhcp, many clients share
// a socket; answers are demultiplexed by xid). Replies come as broadcasts to
// 255.255.255.255:68 (RFC 2131 §4.1: clients without an address).
type dhcpSocket struct {
	conn *net.UDPConn
	mu   sync.Mutex
	wait map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
}

func listenDHCP(ctx context.Context, iface string) (*dhcpSocket, error) {
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
	s := &dhcpSocket{conn: pc.(*net.UDPConn), wait: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}}
	go s.read()
	return s, nil
}

func (s *dhcpSocket) Close() error { return s.conn.Close() }

func (s *dhcpSocket) read() {
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

// exchange broadcasts m and waits for a reply of type want with m's xid and
// chaddr, retransmitting with the RFC 2131 §4.1 backoff (first wait
// `first`, doubling) at most tries times.
func (s *dhcpSocket) exchange(ctx context.Context, m *dhcpv4.DHCPv4, want dhcpv4.MessageType, first time.Duration, tries int) (*dhcpv4.DHCPv4, int, error) {
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

// client is one simulated UEFI machine.
type client struct {
	MAC  net.HardwareAddr
	UUID [16]byte
	HTTP bool // UEFI HTTP boot (arch 16, HTTPClient) instead of PXE (arch 7, PXEClient)
}

// result is what one client saw.
type result struct {
	MAC     string
	HTTP    bool
	IP      netip.Addr
	File    string
	Bytes   int64
	SHA256  [32]byte
	DHCP    time.Duration // DISCOVER sent → ACK received
	Total   time.Duration // DISCOVER sent → last byte of the file
	Retries int           // DHCP retransmissions
	Stage   string        // where it failed: dhcp-offer, dhcp-ack, boot-answer, tftp, http
	Err     error
}

func newClient(i int, http bool) client {
	c := client{MAC: net.HardwareAddr{0x02, 0x53, 0, 0, 0, 0}, HTTP: http}
	binary.BigEndian.PutUint32(c.MAC[2:], uint32(i))
	// A version-4-shaped UUID derived from the index: unique, reproducible.
	binary.BigEndian.PutUint32(c.UUID[:], 0x53746f72) // "Stor"
	binary.BigEndian.PutUint32(c.UUID[12:], uint32(i))
	c.UUID[6] = 0x40
	c.UUID[8] = 0x80
	return c
}

func (c client) modifiers() []dhcpv4.Modifier {
	arch, vendor := iana.EFI_X86_64, vendorPXE
	if c.HTTP {
		arch, vendor = iana.EFI_X86_64_HTTP, vendorHTTP
	}
	return []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendor)),
		// Option 97: type 0 then the 16-byte UUID (RFC 4578 §2.5).
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, c.UUID[:]...))),
	}
}

// fetchOptions are the transfer parameters: blksize 1468 fits one 1500-byte
// packet (RFC 2348), windowsize 16 (RFC 7440) as current UEFI firmware asks.
type fetchOptions struct {
	DHCPTimeout time.Duration // first retransmission timeout
	DHCPTries   int
	TFTP        tftp.ClientOptions
	HTTP        *http.Client
}

// boot runs DORA, then fetches the boot file the ACK names.
func (c client) boot(ctx context.Context, s *dhcpSocket, o fetchOptions) (r result) {
	r = result{MAC: c.MAC.String(), HTTP: c.HTTP}
	start := time.Now()
	d, err := dhcpv4.NewDiscovery(c.MAC, c.modifiers()...)
	if err != nil {
		r.Stage, r.Err = "dhcp-offer", err
		return r
	}
	offer, tries, err := s.exchange(ctx, d, dhcpv4.MessageTypeOffer, o.DHCPTimeout, o.DHCPTries)
	r.Retries += tries - 1
	if err != nil {
		r.Stage, r.Err = "dhcp-offer", err
		return r
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, c.modifiers()...)
	if err != nil {
		r.Stage, r.Err = "dhcp-ack", err
		return r
	}
	ack, tries, err := s.exchange(ctx, req, dhcpv4.MessageTypeAck, o.DHCPTimeout, o.DHCPTries)
	r.Retries += tries - 1
	if err != nil {
		r.Stage, r.Err = "dhcp-ack", err
		return r
	}
	r.DHCP = time.Since(start)
	r.IP, _ = netip.AddrFromSlice(ack.YourIPAddr.To4())
	r.File = ack.BootFileName
	if r.File == "" {
		r.Stage, r.Err = "boot-answer", errors.New("ACK carries no boot file")
		return r
	}
	h := sha256.New()
	cw := &countingWriter{h: h}
	if c.HTTP {
		if ack.ClassIdentifier() != "HTTPClient" {
			// UEFI 2.x §24.7.2: the firmware ignores an HTTP boot
			// answer without option 60 "HTTPClient".
			r.Stage, r.Err = "boot-answer", fmt.Errorf("HTTP boot ACK has option 60 %q, want HTTPClient", ack.ClassIdentifier())
			return r
		}
		r.Stage, r.Err = "http", httpGet(ctx, o.HTTP, r.File, cw)
	} else {
		next, ok := netip.AddrFromSlice(ack.ServerIPAddr.To4())
		if !ok || next.IsUnspecified() {
			r.Stage, r.Err = "boot-answer", errors.New("ACK carries no next-server (siaddr)")
			return r
		}
		_, err = tftp.Get(ctx, netip.AddrPortFrom(next, 69), r.File, cw, o.TFTP)
		r.Stage, r.Err = "tftp", err
	}
	r.Bytes = cw.n
	copy(r.SHA256[:], h.Sum(nil))
	r.Total = time.Since(start)
	if r.Err == nil {
		r.Stage = ""
	}
	return r
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

// storm boots n clients (every httpEvery-th one over HTTP, 0 = none),
// starting them evenly over spread (0 = all at once), at most par at a time
// (0 = no limit).
func storm(ctx context.Context, s *dhcpSocket, n, httpEvery int, spread time.Duration, o fetchOptions) []result {
	res := make([]result, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if spread > 0 {
			at := start.Add(spread * time.Duration(i) / time.Duration(n))
			time.Sleep(time.Until(at))
		}
		c := newClient(i+1, httpEvery > 0 && i%httpEvery == httpEvery-1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = c.boot(ctx, s, o)
		}()
	}
	wg.Wait()
	return res
}
