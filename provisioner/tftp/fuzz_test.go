package tftp

import (
	"bytes"
	"log/slog"
	"strconv"
	"testing"
	"time"
)

func FuzzRequest(f *testing.F) {
	f.Add(rrq(opRRQ, "pxelinux.0", "octet"))
	f.Add(rrq(opRRQ, "boot/x.efi", "OCTET", "blksize", "1468", "tsize", "0", "windowsize", "16", "timeout", "1"))
	f.Add(rrq(opRRQ, "f", "netascii", "BLKSIZE", "99999", "windowsize", "0"))
	f.Add(rrq(opWRQ, "up", "octet"))
	f.Add([]byte{0, 1, 'a', 0, 'o', 'c', 't', 'e', 't'})
	f.Add([]byte{0, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		if r.file == "" || (r.op != opRRQ && r.op != opWRQ) || len(r.opts) > maxOptions {
			t.Fatalf("accepted invalid request %+v", r)
		}
		n := negotiate(r, limits{maxBlock: 1468, maxWindow: 64})
		if n.blksize < minBlockSize || n.blksize > 1468 || n.window < 1 || n.window > 64 || n.timeout < 0 || n.timeout > 255 {
			t.Fatalf("negotiated out of bounds: %+v", n)
		}
		// The OACK must be what a client can parse back, with nothing added.
		pkt := appendOACK(nil, n.oack)
		var asked []option
		for _, o := range r.opts {
			asked = append(asked, o)
		}
		if len(n.oack) > 0 {
			if _, err := parseOACK(pkt, asked); err != nil {
				t.Fatalf("our OACK %q for request %q: %v", pkt, b, err)
			}
		}
		if _, err := cleanName(r.file); err == nil {
			for _, part := range bytes.Split([]byte(r.file), []byte("/")) {
				if string(part) == ".." {
					t.Fatalf("cleanName accepted %q", r.file)
				}
			}
		}
	})
}

// fakeConn feeds scripted client packets to a sender and times out once
// they are used up.
type fakeConn struct {
	in      [][]byte
	written int
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (c *fakeConn) Write(b []byte) (int, error) { c.written++; return len(b), nil }
func (c *fakeConn) Read(b []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, timeoutErr{}
	}
	p := c.in[0]
	c.in = c.in[1:]
	return copy(b, p), nil
}
func (c *fakeConn) SetReadDeadline(time.Time) error { return nil }

// FuzzTransferPackets drives a read transfer with arbitrary client packets
// (ACKs, ERRORs, junk): byte 0 picks the window, byte 1 the block size,
// byte 2 the file size, byte 3 whether an OACK is sent; the rest is a
// sequence of length-prefixed packets. The same bytes also go through the
// client's OACK parser.
func FuzzTransferPackets(f *testing.F) {
	ack := func(n uint16) []byte { return append([]byte{4}, ackPkt(n)...) }
	seq := func(head []byte, pkts ...[]byte) []byte {
		for _, p := range pkts {
			head = append(head, p...)
		}
		return head
	}
	// window 1, blksize 8, 10 bytes: blocks 1 (8) and 2 (2).
	f.Add(seq([]byte{0, 0, 10, 0}, ack(1), ack(2)))
	f.Add(seq([]byte{0, 0, 10, 1}, ack(0), ack(1), ack(1), ack(2)))
	f.Add(seq([]byte{3, 0, 16, 0}, ack(3)))                                // window 4: three blocks in one window
	f.Add(seq([]byte{3, 0, 40, 0}, ack(2), ack(4), ack(6)))                // partial ACKs
	f.Add(seq([]byte{0, 0, 10, 0}, []byte{9, 0, 5, 0, 1, 'n', 'o', 0, 0})) // client ERROR
	f.Add(seq([]byte{0, 0, 10, 0}, []byte{3, 0, 4, 0}, ack(9), ack(1), ack(2)))
	m, _ := newMetrics(nil)
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 4 || len(data) > 4096 {
			return
		}
		window := 1 + int(data[0]%8)
		blksize := minBlockSize + int(data[1]%32)
		size := int(data[2])
		var oack []option
		if data[3]%2 == 1 {
			oack = []option{{"blksize", strconv.Itoa(blksize)}}
		}
		conn := &fakeConn{}
		for rest := data[4:]; len(rest) > 0; {
			n := int(rest[0])
			rest = rest[1:]
			n = min(n, len(rest))
			conn.in = append(conn.in, rest[:n])
			rest = rest[n:]
		}
		if len(conn.in) > 0 {
			parseOACK(append([]byte{0, 6}, data[4:]...), []option{{"blksize", "1468"}, {"tsize", "0"}, {"windowsize", "16"}, {"timeout", "1"}})
		}
		file := bytes.Repeat([]byte{0x5a}, size)
		neg := negotiated{blksize: blksize, window: window, oack: oack}
		s := newSender(conn, bytes.NewReader(file), false, neg, time.Millisecond, 2, m, log)
		n, err := s.run()
		if n < 0 || n > int64(size) {
			t.Fatalf("acknowledged %d bytes of a %d-byte file", n, size)
		}
		if err == nil && n != int64(size) {
			t.Fatalf("success after %d of %d bytes", n, size)
		}
		if s.final != 0 && s.acked > s.final {
			t.Fatalf("acked block %d beyond the last block %d", s.acked, s.final)
		}
	})
}
