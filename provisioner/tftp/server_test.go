package tftp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pintftp "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Transfer(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

type testServer struct {
	*Server
	root string
	obs  *recorder
	reg  *prometheus.Registry
}

// startServer serves a fresh temp root on 127.0.0.1 until the test ends.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	obs := &recorder{}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, nil, obs, reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{Server: s, root: cfg.Root, obs: obs, reg: reg}
}

func writeFile(t *testing.T, dir, name string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func get(t *testing.T, addr netip.AddrPort, file string, o ClientOptions) ([]byte, Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var buf bytes.Buffer
	res, err := Get(ctx, addr, file, &buf, o)
	return buf.Bytes(), res, err
}

// waitEvents waits until the server reported n events (the Observer is
// called after the last ACK arrives, which may be after Get returned).
func waitEvents(t *testing.T, ts *testServer, n int) []Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := ts.obs.all()
		if len(ev) >= n || time.Now().After(deadline) {
			return ev
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestOptionCombinations(t *testing.T) {
	ts := startServer(t, Config{MaxBlockSize: 8192})
	files := map[string][]byte{
		"odd.bin":   writeFile(t, ts.root, "odd.bin", 100_001),
		"exact.bin": writeFile(t, ts.root, "exact.bin", 8192*12), // exact multiple: ends with an empty block
		"empty.bin": writeFile(t, ts.root, "empty.bin", 0),
	}
	for _, file := range []string{"odd.bin", "exact.bin", "empty.bin"} {
		for _, blk := range []int{0, 512, 1468, 8192} {
			for _, win := range []int{0, 1, 4, 16} {
				for _, tsize := range []bool{false, true} {
					name := fmt.Sprintf("%s/blksize=%d/window=%d/tsize=%v", file, blk, win, tsize)
					t.Run(name, func(t *testing.T) {
						got, res, err := get(t, ts.Addr(), file, ClientOptions{BlockSize: blk, WindowSize: win, TSize: tsize})
						if err != nil {
							t.Fatalf("Get: %v", err)
						}
						if !bytes.Equal(got, files[file]) {
							t.Fatalf("content differs: got %d bytes, want %d", len(got), len(files[file]))
						}
						want := map[string]string{}
						if blk > 0 {
							want["blksize"] = fmt.Sprint(blk)
						}
						if win > 0 {
							want["windowsize"] = fmt.Sprint(win)
						}
						if tsize {
							want["tsize"] = fmt.Sprint(len(files[file]))
						}
						if diff := cmp.Diff(want, res.Options); diff != "" {
							t.Errorf("acknowledged options (-want +got):\n%s", diff)
						}
						if res.Duplicates != 0 {
							t.Errorf("%d duplicate DATA packets on a lossless link", res.Duplicates)
						}
					})
				}
			}
		}
	}
}

func TestNegotiationLimits(t *testing.T) {
	ts := startServer(t, Config{MaxWindowSize: 8})
	want := writeFile(t, ts.root, "f", 5000)
	for _, tc := range []struct {
		name string
		o    ClientOptions
		opts map[string]string
	}{
		{"blksize capped to default max", ClientOptions{BlockSize: 65464}, map[string]string{"blksize": "1468"}},
		{"windowsize capped", ClientOptions{WindowSize: 100}, map[string]string{"windowsize": "8"}},
		{"timeout echoed", ClientOptions{TimeoutOption: 3}, map[string]string{"timeout": "3"}},
		{"blksize below RFC 2348 minimum ignored", ClientOptions{BlockSize: 7}, map[string]string{}},
		{"all", ClientOptions{BlockSize: 1024, WindowSize: 4, TSize: true, TimeoutOption: 2},
			map[string]string{"blksize": "1024", "windowsize": "4", "tsize": "5000", "timeout": "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, res, err := get(t, ts.Addr(), "f", tc.o)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("content differs")
			}
			if diff := cmp.Diff(tc.opts, res.Options); diff != "" {
				t.Errorf("acknowledged options (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRollover serves a sparse file with more than 65535 blocks of 512
// bytes, so block numbers wrap to 0 (a window keeps the test fast).
func TestRollover(t *testing.T) {
	ts := startServer(t, Config{})
	const size = 33<<20 + 100
	f, err := os.Create(filepath.Join(ts.root, "big.img"))
	if err != nil {
		t.Fatal(err)
	}
	// Distinct bytes just after the wrap points, so a block sent twice or
	// skipped at the wrap shows up in the hash.
	for _, off := range []int64{65535 * 512, 65536*512 + 3, size - 1} {
		if _, err := f.WriteAt([]byte{byte(off), byte(off >> 8), 0xAA}[:min(3, int(size-off))], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want, _ := os.ReadFile(filepath.Join(ts.root, "big.img"))
	h := sha256.New()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Get(ctx, ts.Addr(), "big.img", h, ClientOptions{BlockSize: 512, WindowSize: 64, TSize: true})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if res.Bytes != size || res.TSize != size {
		t.Fatalf("got %d bytes, tsize %d; want %d", res.Bytes, res.TSize, size)
	}
	if got, w := h.Sum(nil), sha256.Sum256(want); !bytes.Equal(got, w[:]) {
		t.Fatalf("content hash differs after block-number rollover")
	}
}

// lossyProxy relays one client's transfer to the server and drops the
// packets drop selects. The client talks to the proxy's address; the
// proxy talks to the server's request port and then to its transfer TID.
type lossyProxy struct {
	front    *net.UDPConn // client side
	back     *net.UDPConn // server side
	dropped  atomic.Int64
	toServer atomic.Int64
	toClient atomic.Int64
}

func startProxy(t *testing.T, server netip.AddrPort, drop func(toServer bool, seq int64, pkt []byte) bool) *lossyProxy {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{front: front, back: back}
	var client, tid atomic.Value
	go func() {
		buf := make([]byte, 65536)
		for {
			n, src, err := front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			client.Store(src)
			seq := p.toServer.Add(1)
			if drop(true, seq, buf[:n]) {
				p.dropped.Add(1)
				continue
			}
			to := server
			if v := tid.Load(); v != nil && binary.BigEndian.Uint16(buf) != opRRQ {
				to = v.(netip.AddrPort)
			}
			back.WriteToUDPAddrPort(buf[:n], to)
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, src, err := back.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			tid.Store(src)
			seq := p.toClient.Add(1)
			if drop(false, seq, buf[:n]) {
				p.dropped.Add(1)
				continue
			}
			if c := client.Load(); c != nil {
				front.WriteToUDPAddrPort(buf[:n], c.(netip.AddrPort))
			}
		}
	}()
	t.Cleanup(func() { front.Close(); back.Close() })
	return p
}

func (p *lossyProxy) Addr() netip.AddrPort { return p.front.LocalAddr().(*net.UDPAddr).AddrPort() }

func TestLossRetransmission(t *testing.T) {
	for _, win := range []int{1, 4, 16} {
		t.Run(fmt.Sprintf("window=%d", win), func(t *testing.T) {
			ts := startServer(t, Config{Timeout: Duration(30 * time.Millisecond), Retries: 20})
			want := writeFile(t, ts.root, "f", 300_000)
			// Drop every 13th packet towards the client (DATA or OACK) and
			// every 7th towards the server (ACKs), but never the RRQ.
			proxy := startProxy(t, ts.Addr(), func(toServer bool, seq int64, pkt []byte) bool {
				if toServer {
					return seq > 1 && seq%7 == 0
				}
				return seq%13 == 0
			})
			got, _, err := get(t, proxy.Addr(), "f", ClientOptions{
				BlockSize: 1468, WindowSize: win, TSize: true,
				Timeout: 30 * time.Millisecond, Retries: 20, Dally: 200 * time.Millisecond,
			})
			if err != nil {
				t.Fatalf("Get through lossy proxy: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("content differs after loss: %d bytes, want %d", len(got), len(want))
			}
			if proxy.dropped.Load() == 0 {
				t.Fatal("proxy dropped nothing")
			}
			ev := waitEvents(t, ts, 1)
			if len(ev) != 1 || ev[0].Err != nil || ev[0].Bytes != int64(len(want)) {
				t.Fatalf("events = %+v, want one successful transfer of %d bytes", ev, len(want))
			}
			if r := testutil.ToFloat64(ts.m.retransmit); r == 0 {
				t.Error("no retransmission counted despite drops")
			}
		})
	}
}

// rawClient speaks TFTP packet by packet for tests that need to misbehave.
type rawClient struct {
	t    *testing.T
	conn *net.UDPConn
	srv  netip.AddrPort
	tid  netip.AddrPort
}

func newRawClient(t *testing.T, srv netip.AddrPort, ip net.IP) *rawClient {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, srv: srv}
}

func rrq(op uint16, file, mode string, opts ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, op)
	for _, s := range append([]string{file, mode}, opts...) {
		b = append(append(b, s...), 0)
	}
	return b
}

func ackPkt(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

func (c *rawClient) send(pkt []byte) {
	c.t.Helper()
	to := c.srv
	if c.tid.IsValid() {
		to = c.tid
	}
	if _, err := c.conn.WriteToUDPAddrPort(pkt, to); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next packet, or nil after wait.
func (c *rawClient) recv(wait time.Duration) []byte {
	c.t.Helper()
	buf := make([]byte, 65536)
	c.conn.SetReadDeadline(time.Now().Add(wait))
	n, src, err := c.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil
	}
	if !c.tid.IsValid() {
		c.tid = src
	}
	return buf[:n]
}

// expectError asserts that the next packet is an ERROR with code.
func (c *rawClient) expectError(code uint16) string {
	c.t.Helper()
	p := c.recv(2 * time.Second)
	if len(p) < 4 || binary.BigEndian.Uint16(p) != opERROR {
		c.t.Fatalf("got %x, want ERROR %d", p, code)
	}
	if got := binary.BigEndian.Uint16(p[2:]); got != code {
		c.t.Fatalf("got ERROR %d (%q), want %d", got, p[4:], code)
	}
	return string(p[4:])
}

// TestDuplicateACKs sends every ACK twice. A server with the Sorcerer's
// Apprentice bug answers each duplicate with the next block again, so the
// client would see duplicate DATA; ours must send every block exactly once.
func TestDuplicateACKs(t *testing.T) {
	for _, win := range []int{1, 4} {
		t.Run(fmt.Sprintf("window=%d", win), func(t *testing.T) {
			ts := startServer(t, Config{})
			const blocks = 40
			want := writeFile(t, ts.root, "f", 512*blocks+10)
			c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
			c.send(rrq(opRRQ, "f", "octet", "windowsize", fmt.Sprint(win)))
			if p := c.recv(2 * time.Second); len(p) < 2 || binary.BigEndian.Uint16(p) != opOACK {
				t.Fatalf("want OACK, got %x", p)
			}
			c.send(ackPkt(0))
			c.send(ackPkt(0))
			var got []byte
			seen := map[uint16]int{}
			for block := 1; ; {
				p := c.recv(500 * time.Millisecond)
				if p == nil {
					t.Fatalf("no DATA after block %d", block-1)
				}
				if binary.BigEndian.Uint16(p) != opDATA {
					t.Fatalf("want DATA, got %x", p)
				}
				n := binary.BigEndian.Uint16(p[2:])
				seen[n]++
				if int(n) != block {
					continue
				}
				got = append(got, p[4:]...)
				if len(p)-4 < 512 {
					c.send(ackPkt(n))
					c.send(ackPkt(n))
					break
				}
				if block%win == 0 {
					c.send(ackPkt(n))
					c.send(ackPkt(n))
				}
				block++
			}
			if !bytes.Equal(got, want) {
				t.Fatal("content differs")
			}
			// Anything more (a late duplicate) would show within a short wait.
			for p := c.recv(100 * time.Millisecond); p != nil; p = c.recv(100 * time.Millisecond) {
				seen[binary.BigEndian.Uint16(p[2:])]++
			}
			for n, k := range seen {
				if k != 1 {
					t.Errorf("block %d sent %d times", n, k)
				}
			}
		})
	}
}

func TestPathEscapeRefused(t *testing.T) {
	outside := t.TempDir()
	writeFile(t, outside, "secret", 10)
	ts := startServer(t, Config{})
	writeFile(t, ts.root, "sub/ok", 10)
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(ts.root, "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../"+filepath.Base(outside)+"/secret", filepath.Join(ts.root, "rel-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/ok", filepath.Join(ts.root, "inside-link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(ts.root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"../" + filepath.Base(outside) + "/secret",
		"sub/../../" + filepath.Base(outside) + "/secret",
		"..",
		filepath.Join(outside, "secret"), // absolute
		"/sub/ok",                        // absolute, even inside the root
		`sub\ok`,                         // backslash
		`..\secret`,
		"abs-link",
		"rel-link",
		"sub",  // a directory
		"fifo", // not a regular file: must not block either
		"sub/ok\x01",
	} {
		t.Run(strings.ReplaceAll(name, "/", "|"), func(t *testing.T) {
			c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
			c.send(rrq(opRRQ, name, "octet"))
			c.expectError(errAccess)
		})
	}
	t.Run("NUL in name", func(t *testing.T) {
		// The NUL ends the name early; what follows is no valid mode.
		c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
		c.send(rrq(opRRQ, "sub/ok\x00../secret", "octet"))
		c.expectError(errIllegalOp)
	})
	t.Run("symlink inside root allowed", func(t *testing.T) {
		if _, _, err := get(t, ts.Addr(), "inside-link", ClientOptions{}); err != nil {
			t.Fatalf("Get inside-link: %v", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
		c.send(rrq(opRRQ, "nope", "octet"))
		c.expectError(errNotFound)
	})
}

func TestWriteRefused(t *testing.T) {
	ts := startServer(t, Config{})
	c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
	c.send(rrq(opWRQ, "new", "octet"))
	c.expectError(errAccess)
	if _, err := os.Stat(filepath.Join(ts.root, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("WRQ created a file: %v", err)
	}
	if got := testutil.ToFloat64(ts.m.transfers.WithLabelValues(resultRefused)); got != 1 {
		t.Errorf("refused transfers = %v, want 1", got)
	}
	// pin/tftp's client as an independent peer sees the refusal too.
	pc, err := pintftp.NewClient(ts.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	pc.SetTimeout(time.Second)
	pc.SetRetries(1)
	if _, err := pc.Send("new2", "octet"); err == nil {
		t.Fatal("pin/tftp client: write accepted")
	}
}

// stall starts a transfer from ip that receives its first block and then
// never acknowledges, holding one transfer slot until the server times out.
func stall(t *testing.T, ts *testServer, ip net.IP) {
	t.Helper()
	c := newRawClient(t, ts.Addr(), ip)
	c.send(rrq(opRRQ, "f", "octet"))
	if p := c.recv(2 * time.Second); len(p) < 2 || binary.BigEndian.Uint16(p) != opDATA {
		t.Fatalf("stalling client: want DATA, got %x", p)
	}
}

func TestRateLimits(t *testing.T) {
	t.Run("per client", func(t *testing.T) {
		ts := startServer(t, Config{MaxPerClient: 2, Timeout: Duration(5 * time.Second)})
		writeFile(t, ts.root, "f", 10_000)
		stall(t, ts, net.IPv4(127, 0, 0, 1))
		stall(t, ts, net.IPv4(127, 0, 0, 1))
		_, _, err := get(t, ts.Addr(), "f", ClientOptions{})
		if err == nil || !strings.Contains(err.Error(), "too many transfers") {
			t.Fatalf("third transfer from one client: err = %v, want too many transfers", err)
		}
		// Another client address is not limited by the first one's count.
		c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 2))
		c.send(rrq(opRRQ, "f", "octet"))
		if p := c.recv(2 * time.Second); len(p) < 2 || binary.BigEndian.Uint16(p) != opDATA {
			t.Fatalf("other client: want DATA, got %x", p)
		}
		if got := testutil.ToFloat64(ts.m.transfers.WithLabelValues(resultLimited)); got != 1 {
			t.Errorf("limited transfers = %v, want 1", got)
		}
	})
	t.Run("global", func(t *testing.T) {
		ts := startServer(t, Config{MaxTransfers: 1, Timeout: Duration(5 * time.Second)})
		writeFile(t, ts.root, "f", 10_000)
		stall(t, ts, net.IPv4(127, 0, 0, 2))
		_, _, err := get(t, ts.Addr(), "f", ClientOptions{})
		if err == nil || !strings.Contains(err.Error(), "too many transfers") {
			t.Fatalf("transfer beyond the global cap: err = %v, want too many transfers", err)
		}
		if got := testutil.ToFloat64(ts.m.active); got != 1 {
			t.Errorf("active transfers = %v, want 1", got)
		}
	})
}

func TestMalformedPackets(t *testing.T) {
	ts := startServer(t, Config{})
	want := writeFile(t, ts.root, "f", 3000)
	long := rrq(opRRQ, strings.Repeat("a", 600), "octet")
	var flood []string
	for i := range 40 {
		flood = append(flood, fmt.Sprintf("opt%d", i), "1")
	}
	for _, tc := range []struct {
		name  string
		pkt   []byte
		reply bool // an ERROR 4 is expected; otherwise silence
	}{
		{"one byte", []byte{1}, false},
		{"unknown opcode", []byte{0, 99, 'x', 0}, true},
		{"opcode zero", []byte{0, 0}, true},
		{"truncated RRQ", []byte{0, 1, 'f'}, true},
		{"RRQ without mode", []byte{0, 1, 'f', 0}, true},
		{"unknown mode", rrq(opRRQ, "f", "binary"), true},
		{"option without value", append(rrq(opRRQ, "f", "octet"), "blksize\x00"...), true},
		{"oversized request", long, true},
		{"option flood", rrq(opRRQ, "f", "octet", flood...), true},
		{"stray ACK", ackPkt(1), false},
		{"stray ERROR", appendError(nil, 0, "x"), false},
		{"stray DATA", []byte{0, 3, 0, 1, 'x'}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(ts.m.bad.WithLabelValues("request"))
			c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
			c.send(tc.pkt)
			if tc.reply {
				c.expectError(errIllegalOp)
			} else if p := c.recv(100 * time.Millisecond); p != nil {
				t.Fatalf("got reply %x, want none", p)
			}
			if got := testutil.ToFloat64(ts.m.bad.WithLabelValues("request")); got != before+1 {
				t.Errorf("bad request packets = %v, want %v", got, before+1)
			}
		})
	}
	t.Run("junk during a transfer", func(t *testing.T) {
		c := newRawClient(t, ts.Addr(), net.IPv4(127, 0, 0, 1))
		c.send(rrq(opRRQ, "f", "octet"))
		var got []byte
		for block := uint16(1); ; block++ {
			p := c.recv(2 * time.Second)
			if len(p) < 4 || binary.BigEndian.Uint16(p[2:]) != block {
				t.Fatalf("want DATA %d, got %x", block, p)
			}
			got = append(got, p[4:]...)
			c.send([]byte{0, 4, 0})          // truncated ACK
			c.send([]byte{0, 3, 0, 1, 2, 3}) // DATA to a read transfer
			c.send([]byte{0, 77, 1, 2})      // unknown opcode
			c.send(ackPkt(block + 1000))     // ACK for a block never sent
			c.send(ackPkt(block))
			if len(p) < 516 {
				break
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatal("content differs")
		}
		if got := testutil.ToFloat64(ts.m.bad.WithLabelValues("transfer")); got < 3 {
			t.Errorf("bad transfer packets = %v, want >= 3", got)
		}
	})
	// The server still serves.
	if got, _, err := get(t, ts.Addr(), "f", ClientOptions{}); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Get after junk: %v", err)
	}
}

func TestObserverAndMetrics(t *testing.T) {
	ts := startServer(t, Config{})
	want := writeFile(t, ts.root, "boot/x.efi", 70_000)
	if _, _, err := get(t, ts.Addr(), "boot/x.efi", ClientOptions{BlockSize: 1468, WindowSize: 8}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(t, ts.Addr(), "missing", ClientOptions{}); err == nil {
		t.Fatal("Get of a missing file succeeded")
	}
	ev := waitEvents(t, ts, 2)
	if len(ev) != 2 {
		t.Fatalf("got %d events, want 2", len(ev))
	}
	okEv, missEv := ev[0], ev[1]
	if okEv.File != "boot/x.efi" {
		okEv, missEv = ev[1], ev[0]
	}
	if okEv.Err != nil || okEv.Bytes != int64(len(want)) || okEv.Protocol != "tftp" || !okEv.Remote.Addr().IsLoopback() || okEv.Started.IsZero() {
		t.Errorf("success event = %+v", okEv)
	}
	if missEv.Err == nil || !errors.Is(missEv.Err, os.ErrNotExist) || missEv.File != "missing" {
		t.Errorf("failure event = %+v", missEv)
	}
	if got := testutil.ToFloat64(ts.m.bytes); got != float64(len(want)) {
		t.Errorf("bytes = %v, want %d", got, len(want))
	}
	for result, n := range map[string]float64{resultOK: 1, resultNotFound: 1, resultTimeout: 0} {
		if got := testutil.ToFloat64(ts.m.transfers.WithLabelValues(result)); got != n {
			t.Errorf("transfers{result=%s} = %v, want %v", result, got, n)
		}
	}
	if got := testutil.ToFloat64(ts.m.active); got != 0 {
		t.Errorf("active = %v, want 0", got)
	}
	n, err := testutil.GatherAndCount(ts.reg, "provisioner_tftp_bytes_total", "provisioner_tftp_transfers_total", "provisioner_tftp_active_transfers")
	if err != nil || n == 0 {
		t.Errorf("registered metrics: %d, %v", n, err)
	}
}

// TestPinClientInterop fetches with pin/tftp's client, an independent
// implementation of blksize and tsize.
func TestPinClientInterop(t *testing.T) {
	ts := startServer(t, Config{})
	want := writeFile(t, ts.root, "f", 123_457)
	for _, blk := range []int{0, 1468} {
		c, err := pintftp.NewClient(ts.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetBlockSize(blk)
		c.RequestTSize(true)
		wt, err := c.Receive("f", "octet")
		if err != nil {
			t.Fatalf("blksize %d: Receive: %v", blk, err)
		}
		if n, ok := wt.(pintftp.IncomingTransfer).Size(); !ok || n != int64(len(want)) {
			t.Errorf("blksize %d: tsize = %d, %v", blk, n, ok)
		}
		var buf bytes.Buffer
		if _, err := wt.WriteTo(&buf); err != nil {
			t.Fatalf("blksize %d: WriteTo: %v", blk, err)
		}
		if !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("blksize %d: content differs", blk)
		}
	}
}

func TestNetascii(t *testing.T) {
	ts := startServer(t, Config{})
	if err := os.WriteFile(filepath.Join(ts.root, "t.txt"), []byte("a\nb\rc"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, res, err := get(t, ts.Addr(), "t.txt", ClientOptions{Mode: "netascii", TSize: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("a\r\nb\r\x00c", string(got)); diff != "" {
		t.Errorf("netascii (-want +got):\n%s", diff)
	}
	if _, ok := res.Options["tsize"]; ok {
		t.Error("tsize acknowledged in netascii mode, where the size on the wire is unknown")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // substring naming the field; "" = valid
	}{
		{Config{Root: "/x"}, ""},
		{Config{}, "tftp.root"},
		{Config{Root: "/x", Listen: "nope"}, "tftp.listen"},
		{Config{Root: "/x", MaxBlockSize: 100}, "tftp.max_block_size"},
		{Config{Root: "/x", MaxBlockSize: 70000}, "tftp.max_block_size"},
		{Config{Root: "/x", MaxWindowSize: -1}, "tftp.max_window_size"},
		{Config{Root: "/x", Timeout: Duration(time.Millisecond)}, "tftp.timeout"},
		{Config{Root: "/x", Retries: 1000}, "tftp.retries"},
		{Config{Root: "/x", MaxPerClient: -1}, "tftp.max_per_client"},
		{Config{Root: "/x", MaxTransfers: -1}, "tftp.max_transfers"},
		{Config{Root: "/x", SocketBuffer: -1}, "tftp.socket_buffer"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v, want error naming %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := New(Config{Root: filepath.Join(t.TempDir(), "missing"), Listen: "127.0.0.1:0"}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "tftp.root") {
		t.Errorf("New with a missing root: %v", err)
	}
}

func TestServeReturnsOnCancel(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "f", 10_000)
	s, err := New(Config{Root: root, Listen: "127.0.0.1:0", Timeout: Duration(10 * time.Second)}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	// A stalled transfer must not keep Serve from returning.
	c := newRawClient(t, s.Addr(), net.IPv4(127, 0, 0, 1))
	c.send(rrq(opRRQ, "f", "octet"))
	if p := c.recv(2 * time.Second); p == nil {
		t.Fatal("no DATA")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestUnspecifiedListenAnswersFromRequestAddress(t *testing.T) {
	root := t.TempDir()
	want := writeFile(t, root, "f", 5000)
	s, err := New(Config{Root: root, Listen: "0.0.0.0:0"}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Serve(ctx)
	// 127.0.0.3 is loopback too; replies must come from it, or the client
	// (which filters by server address) would never see them.
	got, _, err := get(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), s.Addr().Port()), "f", ClientOptions{BlockSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
}
