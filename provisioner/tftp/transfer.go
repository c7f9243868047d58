package tftp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/pin/tftp/v3/netascii"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

var (
	errClientAbort = errors.New("client aborted the transfer")
	errTimeout     = errors.New("no acknowledgment after all retries")
)

// sender runs the read path of one transfer: optional OACK, then windows of
// DATA blocks (RFC 7440; a window of 1 is RFC 1350's lockstep).
//
// Blocks are numbered absolutely (int64, first block 1) and put on the wire
// modulo 2^16, so a transfer continues past block 65535 with block 0.
type sender struct {
	conn    datagramConn
	r       io.Reader
	blksize int
	window  int
	timeout time.Duration
	retries int
	oack    []option
	m       *metrics
	log     *slog.Logger

	// ring holds the blocks acked+1 … acked+window so a window can be resent
	// after a timeout or a partial ACK; slot = block mod window.
	ring     [][]byte
	read     int64 // highest block read from r into the ring
	final    int64 // number of the last (short) block, 0 while unknown
	finalLen int   // its length
	acked    int64 // highest block acknowledged
	rx       []byte
	batch    [][]byte
	msgs     []ipv4.Message
	bw       batchWriter // nil: one write per packet
}

// batchWriter sends several datagrams in one system call (sendmmsg on
// Linux); ipv4.PacketConn and ipv6.PacketConn implement it.
type batchWriter interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// write sends pkts in order, in as few system calls as the socket allows.
func (t *sender) write(pkts [][]byte) error {
	if t.bw == nil {
		for _, p := range pkts {
			if _, err := t.conn.Write(p); err != nil {
				return err
			}
		}
		return nil
	}
	for len(pkts) > 0 {
		t.msgs = t.msgs[:0]
		for _, p := range pkts {
			t.msgs = append(t.msgs, ipv4.Message{Buffers: [][]byte{p}})
		}
		n, err := t.bw.WriteBatch(t.msgs, 0)
		if err != nil {
			return err
		}
		if n <= 0 {
			return errors.New("sendmmsg sent nothing")
		}
		pkts = pkts[n:]
	}
	return nil
}

// datagramConn is the transfer socket as the sender uses it: a UDP socket
// connected to the client's TID (tests and fuzzing substitute a fake).
type datagramConn interface {
	Write(b []byte) (int, error)
	Read(b []byte) (int, error)
	SetReadDeadline(t time.Time) error
}

func newSender(conn datagramConn, f io.Reader, ascii bool, n negotiated, timeout time.Duration, retries int, m *metrics, log *slog.Logger) *sender {
	// Read ahead in large chunks: one read syscall per window, not per block.
	var r io.Reader = bufio.NewReaderSize(f, max(64<<10, n.blksize*n.window))
	if ascii {
		r = netascii.ToReader(r)
	}
	var bw batchWriter
	if c, ok := conn.(*net.UDPConn); ok {
		if a, _ := c.LocalAddr().(*net.UDPAddr); a != nil && a.IP.To4() == nil {
			bw = ipv6.NewPacketConn(c)
		} else {
			bw = ipv4.NewPacketConn(c)
		}
	}
	return &sender{
		bw:   bw,
		conn: conn, r: r, blksize: n.blksize, window: n.window, timeout: timeout,
		retries: retries, oack: n.oack, m: m, log: log,
		ring: make([][]byte, n.window),
		rx:   make([]byte, 1024),
	}
}

// run sends the file and returns the number of file bytes acknowledged.
func (t *sender) run() (int64, error) {
	if len(t.oack) > 0 {
		if err := t.sendOACK(); err != nil {
			return 0, err
		}
	}
	next := int64(1)
	tries := 0
	for {
		// Send the window acked+1 … acked+window, stopping after the last block.
		first := next
		t.batch = t.batch[:0]
		for next <= t.acked+int64(t.window) && (t.final == 0 || next <= t.final) {
			pkt, err := t.block(next)
			if err != nil {
				return t.bytes(), fmt.Errorf("read block %d: %w", next, err)
			}
			t.batch = append(t.batch, pkt)
			next++
		}
		if err := t.write(t.batch); err != nil {
			return t.bytes(), fmt.Errorf("send blocks %d…%d: %w", first, next-1, err)
		}
		sent := next - 1
		progressed, err := t.awaitACK(sent)
		if err != nil {
			return t.bytes(), err
		}
		if !progressed {
			tries++
			if tries >= t.retries {
				return t.bytes(), fmt.Errorf("block %d: %w", t.acked+1, errTimeout)
			}
			t.m.retransmit.Inc()
			next = t.acked + 1
			continue
		}
		tries = 0
		if t.final != 0 && t.acked == t.final {
			return t.bytes(), nil
		}
		// RFC 7440 §4: the next window starts after the acknowledged block,
		// also when the ACK is for a block inside the window just sent.
		next = t.acked + 1
	}
}

// awaitACK waits for an ACK that acknowledges at least one new block up to
// sent. It returns false on timeout. Duplicate and stale ACKs are ignored
// rather than answered, which keeps a delayed ACK from doubling every later
// block (the Sorcerer's Apprentice syndrome, RFC 1123 §4.2.3.1).
func (t *sender) awaitACK(sent int64) (bool, error) {
	if err := t.conn.SetReadDeadline(time.Now().Add(t.timeout)); err != nil {
		return false, err
	}
	for {
		n, err := t.conn.Read(t.rx)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false, nil
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				// ICMP port unreachable: the client is gone.
				return false, fmt.Errorf("client port unreachable: %w", errClientAbort)
			}
			return false, err
		}
		rep, err := parseReply(t.rx[:n])
		if err != nil {
			t.m.bad.WithLabelValues("transfer").Inc()
			t.log.Debug("tftp: bad packet during transfer", "len", n, "err", err)
			continue
		}
		if rep.op == opERROR {
			return false, fmt.Errorf("%w: code %d: %q", errClientAbort, rep.code, rep.msg)
		}
		// Distance from the last acknowledged block, modulo 2^16.
		delta := int64(rep.block - uint16(t.acked))
		if delta == 0 || delta > sent-t.acked {
			continue
		}
		before := t.bytes()
		t.acked += delta
		t.m.bytes.Add(float64(t.bytes() - before))
		return true, nil
	}
}

// sendOACK sends the option acknowledgment and waits for ACK 0 (RFC 2347).
func (t *sender) sendOACK() error {
	pkt := appendOACK(make([]byte, 0, 128), t.oack)
	for tries := 0; ; tries++ {
		if tries >= t.retries {
			return fmt.Errorf("OACK: %w", errTimeout)
		}
		if tries > 0 {
			t.m.retransmit.Inc()
		}
		if _, err := t.conn.Write(pkt); err != nil {
			return fmt.Errorf("send OACK: %w", err)
		}
		if err := t.conn.SetReadDeadline(time.Now().Add(t.timeout)); err != nil {
			return err
		}
		for {
			n, err := t.conn.Read(t.rx)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				if errors.Is(err, syscall.ECONNREFUSED) {
					return fmt.Errorf("client port unreachable: %w", errClientAbort)
				}
				return err
			}
			rep, err := parseReply(t.rx[:n])
			if err != nil {
				t.m.bad.WithLabelValues("transfer").Inc()
				t.log.Debug("tftp: bad packet after OACK", "len", n, "err", err)
				continue
			}
			if rep.op == opERROR {
				return fmt.Errorf("%w: OACK refused: code %d: %q", errClientAbort, rep.code, rep.msg)
			}
			if rep.block == 0 {
				return nil
			}
		}
	}
}

// block returns the DATA packet of block n, which is either in the ring or
// the next one to read (n == t.read+1).
func (t *sender) block(n int64) ([]byte, error) {
	slot := int(n % int64(t.window))
	if n <= t.read {
		return t.ring[slot], nil
	}
	if n != t.read+1 {
		return nil, fmt.Errorf("internal: block %d requested after %d", n, t.read)
	}
	buf := t.ring[slot]
	if buf == nil {
		buf = make([]byte, 4+t.blksize)
	}
	buf = buf[:4+t.blksize]
	binary.BigEndian.PutUint16(buf, opDATA)
	binary.BigEndian.PutUint16(buf[2:], uint16(n))
	k, err := io.ReadFull(t.r, buf[4:])
	switch {
	case err == nil:
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		t.final, t.finalLen = n, k
	default:
		return nil, err
	}
	buf = buf[:4+k]
	t.ring[slot] = buf
	t.read = n
	return buf, nil
}

// bytes is the number of file bytes acknowledged so far: every block but
// the last is full.
func (t *sender) bytes() int64 {
	if t.final != 0 && t.acked == t.final {
		return (t.final-1)*int64(t.blksize) + int64(t.finalLen)
	}
	return t.acked * int64(t.blksize)
}
