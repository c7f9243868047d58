package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ClientOptions selects what Get asks the server for. Zero values ask for
// nothing (RFC 1350 lockstep with 512-byte blocks).
type ClientOptions struct {
	BlockSize  int  // blksize option (RFC 2348), 0 = none
	WindowSize int  // windowsize option (RFC 7440), 0 = none
	TSize      bool // tsize option (RFC 2349)
	// TimeoutOption asks the server for this retransmission timeout in
	// seconds (RFC 2349), 0 = none.
	TimeoutOption int
	// Timeout is how long Get waits before resending its last packet.
	// Default 1s.
	Timeout time.Duration
	Retries int    // timeouts in a row before giving up, default 5
	Mode    string // "octet" (default) or "netascii"
	// Buffer is the socket receive buffer; default 4 MiB so a window of
	// large blocks is not dropped by the kernel.
	Buffer int
	// Dally keeps acknowledging a retransmitted last block for this long
	// after the transfer, in case the final ACK was lost. Default 0.
	Dally time.Duration
}

// Result describes a finished Get.
type Result struct {
	Bytes      int64
	TSize      int64             // the server's tsize answer, -1 if none
	Options    map[string]string // options the server acknowledged
	Packets    int               // DATA packets received, duplicates included
	Duplicates int               // DATA packets that were not the expected block
}

// Get downloads file from a TFTP server into w. It is the provisioner's own
// RFC 7440 client, used by tests and load generators (bench/tftp); the
// firmware of a booting machine is the real client.
func Get(ctx context.Context, server netip.AddrPort, file string, w io.Writer, o ClientOptions) (Result, error) {
	res := Result{TSize: -1, Options: map[string]string{}}
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	if o.Retries == 0 {
		o.Retries = 5
	}
	if o.Mode == "" {
		o.Mode = "octet"
	}
	if o.Buffer == 0 {
		o.Buffer = 4 << 20
	}
	laddr := &net.UDPAddr{IP: net.IPv4zero}
	if server.Addr().Is6() {
		laddr = &net.UDPAddr{IP: net.IPv6unspecified}
	}
	if server.Addr().IsLoopback() {
		laddr.IP = net.IP(server.Addr().AsSlice())
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	setBuffers(conn, o.Buffer)

	var opts []option
	if o.BlockSize > 0 {
		opts = append(opts, option{"blksize", strconv.Itoa(o.BlockSize)})
	}
	if o.WindowSize > 0 {
		opts = append(opts, option{"windowsize", strconv.Itoa(o.WindowSize)})
	}
	if o.TSize {
		opts = append(opts, option{"tsize", "0"})
	}
	if o.TimeoutOption > 0 {
		opts = append(opts, option{"timeout", strconv.Itoa(o.TimeoutOption)})
	}
	rrq := binary.BigEndian.AppendUint16(nil, opRRQ)
	rrq = append(append(rrq, file...), 0)
	rrq = append(append(rrq, o.Mode...), 0)
	for _, op := range opts {
		rrq = append(append(rrq, op.name...), 0)
		rrq = append(append(rrq, op.value...), 0)
	}

	blksize, window := defaultBlockSize, 1
	rd := newBatchReader(conn, 1, 65536)
	var tid netip.AddrPort
	last := rrq // the packet resent on timeout
	sendLast := func() error {
		var err error
		if tid.IsValid() {
			_, err = conn.WriteToUDPAddrPort(last, tid)
		} else {
			_, err = conn.WriteToUDPAddrPort(last, server)
		}
		return err
	}
	ack := func(block uint16) error {
		last = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(last[:0:0], opACK), block)
		return sendLast()
	}
	if err := sendLast(); err != nil {
		return res, err
	}
	expect := int64(1) // next block wanted, absolute
	since := 0         // blocks received since the last ACK
	tries := 0
	done := false
	var dallyUntil time.Time
	for {
		deadline := time.Now().Add(o.Timeout)
		if done {
			if o.Dally <= 0 || !time.Now().Before(dallyUntil) {
				return res, nil
			}
			deadline = dallyUntil
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return res, err
		}
		pkt, src, err := rd.next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if done {
					return res, nil
				}
				if tries++; tries >= o.Retries {
					return res, fmt.Errorf("tftp get %q: timeout waiting for block %d", file, expect)
				}
				// Resend the request until the server answers; afterwards
				// acknowledge everything received in order, which restarts
				// the server's window right after it (RFC 7440 §4).
				if tid.IsValid() {
					err = ack(uint16(expect - 1))
				} else {
					err = sendLast()
				}
				if err != nil {
					return res, err
				}
				since = 0
				continue
			}
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			return res, err
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if src.Addr() != server.Addr().Unmap() {
			continue
		}
		if tid.IsValid() && src != tid {
			// RFC 1350 §4: a packet from another TID gets error 5 and is ignored.
			conn.WriteToUDPAddrPort(appendError(nil, errUnknownTID, "unknown transfer ID"), src)
			continue
		}
		if len(pkt) < 4 {
			continue
		}
		switch binary.BigEndian.Uint16(pkt) {
		case opERROR:
			rep, _ := parseReply(pkt)
			return res, fmt.Errorf("tftp get %q: server error %d: %s", file, rep.code, rep.msg)
		case opOACK:
			if tid.IsValid() {
				continue // a retransmitted OACK; our ACK 0 is resent on timeout
			}
			tid = src
			acked, err := parseOACK(pkt, opts)
			if err != nil {
				conn.WriteToUDPAddrPort(appendError(nil, errOptionRefuse, err.Error()), src)
				return res, fmt.Errorf("tftp get %q: %w", file, err)
			}
			res.Options = acked
			if v, ok := acked["blksize"]; ok {
				blksize, _ = strconv.Atoi(v)
			}
			if v, ok := acked["windowsize"]; ok {
				window, _ = strconv.Atoi(v)
			}
			// Read up to a window of blocks per system call; one byte more
			// than a block so an oversized DATA packet is detected.
			rd = newBatchReader(conn, min(window, 64), blksize+5)
			if v, ok := acked["tsize"]; ok {
				res.TSize, _ = strconv.ParseInt(v, 10, 64)
			}
			tries = 0
			if err := ack(0); err != nil {
				return res, err
			}
		case opDATA:
			if !tid.IsValid() {
				tid = src // no OACK: the server accepted no option
			}
			res.Packets++
			block := binary.BigEndian.Uint16(pkt[2:])
			data := pkt[4:]
			if done || block != uint16(expect) {
				res.Duplicates++
				// An old block (the server resent a window whose ACK it
				// missed) or a gap: acknowledge the last block received in
				// order so the server restarts the window there (RFC 7440 §4).
				// The server ignores this ACK if it already has it.
				if err := ack(uint16(expect - 1)); err != nil {
					return res, err
				}
				since = 0
				continue
			}
			if len(data) > blksize {
				return res, fmt.Errorf("tftp get %q: block %d has %d bytes, blksize is %d", file, expect, len(data), blksize)
			}
			if _, err := w.Write(data); err != nil {
				conn.WriteToUDPAddrPort(appendError(nil, errNotDefined, "write failed"), src)
				return res, err
			}
			res.Bytes += int64(len(data))
			tries = 0
			expect++
			since++
			if len(data) < blksize {
				done = true
				dallyUntil = time.Now().Add(o.Dally)
				if err := ack(block); err != nil {
					return res, err
				}
				continue
			}
			if since >= window {
				since = 0
				if err := ack(block); err != nil {
					return res, err
				}
			}
		}
	}
}

// parseOACK checks that the server acknowledged only options that were
// asked for, with values it may choose (RFC 2347: never more than asked).
func parseOACK(pkt []byte, asked []option) (map[string]string, error) {
	body := pkt[2:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return nil, errors.New("OACK not NUL-terminated")
	}
	fields := strings.Split(string(body[:len(body)-1]), "\x00")
	if len(fields)%2 != 0 {
		return nil, errors.New("OACK option without value")
	}
	want := map[string]string{}
	for _, o := range asked {
		want[o.name] = o.value
	}
	got := map[string]string{}
	for i := 0; i+1 < len(fields); i += 2 {
		name, value := strings.ToLower(fields[i]), fields[i+1]
		req, ok := want[name]
		if !ok {
			return nil, fmt.Errorf("OACK has option %q that was not requested", name)
		}
		v, err := strconv.ParseInt(value, 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("OACK option %s=%q is not a number", name, value)
		}
		r, _ := strconv.ParseInt(req, 10, 64)
		switch name {
		case "blksize", "windowsize":
			if v < 1 || v > r {
				return nil, fmt.Errorf("OACK option %s=%d, asked for at most %d", name, v, r)
			}
		case "timeout":
			if v != r {
				return nil, fmt.Errorf("OACK option timeout=%d, asked for %d", v, r)
			}
		}
		got[name] = value
	}
	return got, nil
}

// batchReader reads datagrams several at a time (recvmmsg on Linux) and
// hands them out one by one; a packet stays valid until the next call.
type batchReader struct {
	rb interface {
		ReadBatch([]ipv4.Message, int) (int, error)
	}
	msgs []ipv4.Message
	n, i int
}

func newBatchReader(c *net.UDPConn, count, size int) *batchReader {
	b := &batchReader{msgs: make([]ipv4.Message, count)}
	for i := range b.msgs {
		b.msgs[i].Buffers = [][]byte{make([]byte, size)}
	}
	if a, _ := c.LocalAddr().(*net.UDPAddr); a != nil && a.IP.To4() == nil {
		b.rb = ipv6.NewPacketConn(c)
	} else {
		b.rb = ipv4.NewPacketConn(c)
	}
	return b
}

func (b *batchReader) next() ([]byte, netip.AddrPort, error) {
	if b.i >= b.n {
		n, err := b.rb.ReadBatch(b.msgs, 0)
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		b.n, b.i = n, 0
	}
	m := &b.msgs[b.i]
	b.i++
	a, ok := m.Addr.(*net.UDPAddr)
	if !ok {
		return nil, netip.AddrPort{}, errors.New("datagram without source address")
	}
	return m.Buffers[0][:m.N], a.AddrPort(), nil
}
