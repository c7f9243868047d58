package cvmport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/attest"
)

// fakeHandler answers like an emulator of platform: the report and quote
// embed the report data, so a test sees which request was answered.
type fakeHandler struct {
	platform attest.Platform
	// block, when set, is waited on before each report or quote.
	block chan struct{}
	err   error

	mu        sync.Mutex
	malformed []error
}

func (h *fakeHandler) Platform() attest.Platform { return h.platform }

func (h *fakeHandler) wait(ctx context.Context) {
	if h.block != nil {
		select {
		case <-h.block:
		case <-ctx.Done():
		}
	}
}

func (h *fakeHandler) GetExtendedReport(ctx context.Context, rd [64]byte) ([]byte, []byte, error) {
	h.wait(ctx)
	if h.err != nil {
		return nil, nil, h.err
	}
	return append([]byte("report:"), rd[:]...), []byte("certs"), nil
}

func (h *fakeHandler) Quote(ctx context.Context, rd [64]byte) ([]byte, error) {
	h.wait(ctx)
	if h.err != nil {
		return nil, h.err
	}
	return append([]byte("quote:"), rd[:]...), nil
}

func (h *fakeHandler) CCEL(context.Context) ([]byte, error) {
	if h.err != nil {
		return nil, h.err
	}
	return bytes.Repeat([]byte{0xcc}, 70000), nil
}

func (h *fakeHandler) Malformed(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.malformed = append(h.malformed, err)
}

func (h *fakeHandler) malformedErrs() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.malformed...)
}

// pair is a connected unix socket pair: buffered like a virtio port and a
// QEMU chardev socket (net.Pipe is not, and would deadlock a client writing
// while the host writes a late answer).
func pair(t *testing.T) (guest, host net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	guest, host = conn(fds[0], "guest"), conn(fds[1], "host")
	t.Cleanup(func() { guest.Close(); host.Close() })
	return guest, host
}

// serve starts Serve on one end of a socket pair and returns the other end.
func serve(t *testing.T, h Handler) net.Conn {
	t.Helper()
	guest, host := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, host, h) }()
	t.Cleanup(func() {
		cancel()
		guest.Close()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
	})
	return guest
}

func rd(b byte) (r [64]byte) {
	for i := range r {
		r[i] = b + byte(i)
	}
	return r
}

// chunky is a port without deadlines whose reads return at most 3 bytes, as a
// character device may.
type chunky struct{ c net.Conn }

func (p chunky) Read(b []byte) (int, error) {
	if len(b) > 3 {
		b = b[:3]
	}
	return p.c.Read(b)
}
func (p chunky) Write(b []byte) (int, error) { return p.c.Write(b) }
func (p chunky) Close() error                { return p.c.Close() }

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		wrap func(net.Conn) io.ReadWriteCloser
	}{
		{"deadlines", func(c net.Conn) io.ReadWriteCloser { return c }},
		{"partial-reads-no-deadlines", func(c net.Conn) io.ReadWriteCloser { return chunky{c} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newClient(ctx, tc.wrap(serve(t, &fakeHandler{platform: attest.PlatformSNP})))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.deadlines != (tc.name == "deadlines") {
				t.Errorf("deadlines = %v", c.deadlines)
			}
			if c.Platform() != attest.PlatformSNP {
				t.Errorf("Platform = %q", c.Platform())
			}
			for i := range 3 {
				r := rd(byte(i))
				rep, certs, err := c.GetExtendedReport(ctx, r)
				if err != nil {
					t.Fatal(err)
				}
				if want := append([]byte("report:"), r[:]...); !bytes.Equal(rep, want) || string(certs) != "certs" {
					t.Errorf("report %q certs %q", rep, certs)
				}
			}
			if _, err := c.Quote(ctx, rd(0)); err == nil || !strings.Contains(err.Error(), "emulates sev-snp") {
				t.Errorf("Quote on an SNP port: %v", err)
			}
			if _, err := c.CCEL(ctx); err == nil {
				t.Error("CCEL on an SNP port succeeded")
			}
		})
	}
	t.Run("tdx", func(t *testing.T) {
		c, err := newClient(ctx, serve(t, &fakeHandler{platform: attest.PlatformTDX}))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		q, err := c.Quote(ctx, rd(9))
		r := rd(9)
		if err != nil || !bytes.Equal(q, append([]byte("quote:"), r[:]...)) {
			t.Errorf("Quote = %q, %v", q, err)
		}
		l, err := c.CCEL(ctx)
		if err != nil || len(l) != 70000 {
			t.Errorf("CCEL = %d bytes, %v", len(l), err)
		}
		if _, _, err := c.GetExtendedReport(ctx, rd(0)); err == nil {
			t.Error("GetExtendedReport on a TDX port succeeded")
		}
	})
}

// TestOSFileDeadlines runs the client over an *os.File (a socket pair, which
// the runtime poller handles like a virtio port), the deadline path Open uses.
func TestOSFileDeadlines(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		// Non-blocking, as the runtime makes a char device it can poll.
		if err := syscall.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	guest := os.NewFile(uintptr(fds[0]), "guest")
	host := os.NewFile(uintptr(fds[1]), "host")
	h := &fakeHandler{platform: attest.PlatformSNP, block: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, host, h) }()
	defer func() {
		cancel()
		// The client's Close ends the stream first (nil) or the cancel does.
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
		host.Close()
	}()
	c, err := newClient(context.Background(), guest)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.deadlines {
		t.Fatal("an *os.File socket has no deadlines")
	}
	testAbandon(t, c, h)
}

// testAbandon: a request that times out is abandoned; its late answer is
// dropped and the next request gets its own.
func testAbandon(t *testing.T, c *Client, h *fakeHandler) {
	t.Helper()
	tctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, _, err := c.GetExtendedReport(tctx, rd(1))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked report: %v, want deadline exceeded", err)
	}
	close(h.block) // the host now answers the abandoned request
	r := rd(2)
	rep, _, err := c.GetExtendedReport(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte("report:"), r[:]...); !bytes.Equal(rep, want) {
		t.Errorf("after an abandoned request got %q, want the answer to the new one", rep)
	}
}

func TestAbandon(t *testing.T) {
	for _, wrap := range []func(net.Conn) io.ReadWriteCloser{
		func(c net.Conn) io.ReadWriteCloser { return c },
		func(c net.Conn) io.ReadWriteCloser { return chunky{c} },
	} {
		h := &fakeHandler{platform: attest.PlatformSNP, block: make(chan struct{})}
		c, err := newClient(context.Background(), wrap(serve(t, h)))
		if err != nil {
			t.Fatal(err)
		}
		testAbandon(t, c, h)
		c.Close()
	}
}

func TestCancel(t *testing.T) {
	h := &fakeHandler{platform: attest.PlatformTDX, block: make(chan struct{})}
	defer close(h.block)
	c, err := newClient(context.Background(), serve(t, h))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c.Quote(ctx, rd(0)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled quote: %v", err)
	}
}

// TestGuestGoneMidAnswer: a guest that leaves while its quote is being
// made ends Serve as an EOF does, not with a write error.
func TestGuestGoneMidAnswer(t *testing.T) {
	h := &fakeHandler{platform: attest.PlatformTDX, block: make(chan struct{})}
	guest, host := pair(t)
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), host, h) }()
	c, err := newClient(context.Background(), guest)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Quote(ctx, rd(0)); err == nil {
		t.Fatal("quote answered while the handler blocks")
	}
	c.Close()
	guest.Close()
	close(h.block) // the answer is written to a closed guest
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil when the guest went away", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the guest left")
	}
}

func TestHandlerError(t *testing.T) {
	h := &fakeHandler{platform: attest.PlatformSNP, err: errors.New("launched file changed: initrd")}
	c, err := newClient(context.Background(), serve(t, h))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _, err = c.GetExtendedReport(context.Background(), rd(0))
	if err == nil || !strings.Contains(err.Error(), "emulator refused") || !strings.Contains(err.Error(), "initrd") {
		t.Errorf("refused report: %v", err)
	}
}

func TestHelloNoHost(t *testing.T) {
	guest, host := pair(t)
	host.Close()
	if _, err := newClient(context.Background(), guest); err == nil {
		t.Error("hello with the host gone succeeded")
	}
	// A host that never answers: Open is bounded by ctx.
	guest, host = pair(t)
	go io.Copy(io.Discard, host)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := newClient(ctx, guest); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hello with a silent host: %v", err)
	}
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "vport9p1")); err == nil || !strings.Contains(err.Error(), "vport9p1") {
		t.Errorf("Open of a missing device: %v", err)
	}
}

// TestHelloPlatform: a host that claims a platform other than SNP or TDX is
// refused.
func TestHelloPlatform(t *testing.T) {
	for _, p := range []attest.Platform{attest.PlatformTPM, "", "sev"} {
		if _, err := newClient(context.Background(), serve(t, &fakeHandler{platform: p})); err == nil {
			t.Errorf("hello with platform %q accepted", p)
		}
	}
}

func TestFindIn(t *testing.T) {
	sys := t.TempDir()
	port := func(dev, name string) {
		d := filepath.Join(sys, "class", "virtio-ports", dev)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "name"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := findIn(sys, "/dev"); !errors.Is(err, ErrNotFound) {
		t.Errorf("no ports: %v", err)
	}
	port("vport1p1", "org.qemu.guest_agent.0\n")
	port("vport1p2", PortName+".old\n")
	if _, err := findIn(sys, "/dev"); !errors.Is(err, ErrNotFound) {
		t.Errorf("other ports only: %v", err)
	}
	port("vport2p1", PortName+"\n")
	got, err := findIn(sys, "/dev")
	if err != nil || got != "/dev/vport2p1" {
		t.Errorf("findIn = %q, %v", got, err)
	}
}

// rawFrame frames payload.
func rawFrame(payload []byte) []byte {
	var b bytes.Buffer
	writeFrame(&b, payload)
	return b.Bytes()
}

func reqPayload(kind byte, seq uint32, fields ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{wireVersion, kind}, seq)
	for _, f := range fields {
		b = append(b, f...)
	}
	return b
}

func field(tag byte, v []byte) []byte { return appendField(nil, tag, v) }

func TestDecodeRequest(t *testing.T) {
	good := reqPayload(byte(opReport), 7, field(tagReportData, make([]byte, 64)))
	if q, err := decodeRequest(good); err != nil || q.Op != opReport || q.Seq != 7 {
		t.Fatalf("good request: %+v, %v", q, err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"short", good[:5], "shorter than the 6-byte header"},
		{"version", append([]byte{2}, good[1:]...), "version 2"},
		{"unknown op", reqPayload(9, 1), "not an operation"},
		{"response kind", reqPayload(byte(opHello)|respBit, 1), "not an operation"},
		{"no report data", reqPayload(byte(opQuote), 1), "report_data is 0 bytes"},
		{"short report data", reqPayload(byte(opQuote), 1, field(tagReportData, make([]byte, 63))), "report_data is 63 bytes"},
		{"long report data", reqPayload(byte(opQuote), 1, field(tagReportData, make([]byte, 65))), "at most 64"},
		{"field on hello", reqPayload(byte(opHello), 1, field(tagReportData, make([]byte, 64))), "not allowed"},
		{"response field", reqPayload(byte(opReport), 1, field(tagReportData, make([]byte, 64)), field(tagReport, []byte{1})), "field report not allowed"},
		{"repeated", reqPayload(byte(opReport), 1, field(tagReportData, make([]byte, 64)), field(tagReportData, make([]byte, 64))), "repeated"},
		{"unknown tag", reqPayload(byte(opCCEL), 1, field(99, nil)), "unknown tag(99)"},
		{"truncated field header", append(reqPayload(byte(opCCEL), 1), tagError, 0), "truncated header"},
		{"truncated field", good[:len(good)-1], "64 bytes, 63 left"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeRequest(tc.b)
			if !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decodeRequest: %v, want ErrMessage with %q", err, tc.want)
			}
		})
	}
}

func TestDecodeResponse(t *testing.T) {
	for _, p := range []response{
		{Op: opHello, Seq: 1, Platform: attest.PlatformSNP},
		{Op: opReport, Seq: 2, Report: []byte{1}, Certs: []byte{2}},
		{Op: opReport, Seq: 2, Report: []byte{1}},
		{Op: opQuote, Seq: 3, Quote: []byte{3}},
		{Op: opCCEL, Seq: 4, CCEL: []byte{4}},
		{Op: opQuote, Seq: 5, Error: "no"},
	} {
		b, err := p.encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeResponse(b)
		if err != nil {
			t.Errorf("%+v: %v", p, err)
		}
		if diff := cmp.Diff(p, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	resp := func(o op, fields ...[]byte) []byte { return reqPayload(byte(o)|respBit, 1, fields...) }
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"request kind", reqPayload(byte(opHello), 1, field(tagPlatform, []byte("tdx"))), "not a response"},
		{"unknown op", resp(5), "not an operation"},
		{"hello without platform", resp(opHello), "platform missing"},
		{"hello tpm", resp(opHello, field(tagPlatform, []byte("tpm"))), `platform "tpm"`},
		{"report without report", resp(opReport, field(tagCerts, []byte{1})), "report missing"},
		{"quote with report", resp(opQuote, field(tagQuote, []byte{1}), field(tagReport, []byte{1})), "field report not allowed"},
		{"error and data", resp(opCCEL, field(tagCCEL, []byte{1}), field(tagError, []byte("x"))), "error together"},
		{"empty error", resp(opCCEL, field(tagError, nil)), "empty error"},
		{"empty ccel", resp(opCCEL, field(tagCCEL, nil)), "ccel missing"},
		{"oversized report", resp(opReport, field(tagReport, make([]byte, maxReportLen+1))), "at most 4096"},
		{"oversized platform", resp(opHello, field(tagPlatform, make([]byte, 17))), "at most 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeResponse(tc.b)
			if !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decodeResponse: %v, want ErrMessage with %q", err, tc.want)
			}
		})
	}
	if _, err := (&response{Op: opCCEL, CCEL: make([]byte, attest.MaxBlobSize+1)}).encode(); !errors.Is(err, ErrMessage) {
		t.Errorf("encode of an oversized ccel: %v", err)
	}
}

func TestReadFrame(t *testing.T) {
	payload := []byte("hello")
	read := func(b []byte, limit int) ([]byte, int, error) {
		return readFrame(bufio.NewReader(bytes.NewReader(b)), limit)
	}
	if got, skipped, err := read(rawFrame(payload), 16); err != nil || skipped != 0 || !bytes.Equal(got, payload) {
		t.Errorf("good frame: %q %d %v", got, skipped, err)
	}
	junk := append([]byte("xxPCVxPC"), rawFrame(payload)...)
	if got, skipped, err := read(junk, 16); err != nil || skipped != 8 || !bytes.Equal(got, payload) {
		t.Errorf("after junk: %q skipped %d, %v", got, skipped, err)
	}
	if _, _, err := read(nil, 16); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
	for _, tc := range []struct {
		name  string
		b     []byte
		limit int
		want  string
	}{
		{"too long", rawFrame(make([]byte, 17)), 16, "length 17, at most 16"},
		{"truncated magic", []byte("PCV"), 16, "inside a frame header"},
		{"truncated header", []byte("PCVM\x00\x00"), 16, "inside the frame header"},
		{"truncated payload", rawFrame(payload)[:10], 16, "inside the frame payload"},
		{"no magic", bytes.Repeat([]byte{'x'}, maxSkip+10), 16, "no frame magic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := read(tc.b, tc.limit)
			if !errors.Is(err, ErrFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("readFrame: %v, want ErrFrame with %q", err, tc.want)
			}
		})
	}
}

// TestServeMalformed: a malformed request gets an error response addressed to
// its seq, the handler hears of it, and serving goes on; garbage before a
// frame is skipped; an oversized frame ends serving with ErrFrame.
func TestServeMalformed(t *testing.T) {
	h := &fakeHandler{platform: attest.PlatformSNP}
	guest, host := pair(t)
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), host, h) }()
	br := bufio.NewReader(guest)
	send := func(b []byte) response {
		t.Helper()
		go guest.Write(b)
		out, _, err := readFrame(br, maxResponse)
		if err != nil {
			t.Fatal(err)
		}
		p, err := decodeResponse(out)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := send(rawFrame(reqPayload(byte(opQuote), 42, field(tagReportData, make([]byte, 3)))))
	if p.Seq != 42 || !strings.Contains(p.Error, "report_data is 3 bytes") {
		t.Errorf("malformed request answered %+v", p)
	}
	p = send(append([]byte("garbage"), rawFrame((&request{Op: opHello, Seq: 43}).encode())...))
	if p.Seq != 43 || p.Platform != attest.PlatformSNP {
		t.Errorf("hello after garbage answered %+v", p)
	}
	go guest.Write(rawFrame(make([]byte, maxRequest+1)))
	if err := <-done; !errors.Is(err, ErrFrame) {
		t.Errorf("Serve after an oversized frame: %v", err)
	}
	errs := h.malformedErrs()
	if len(errs) != 3 {
		t.Errorf("handler heard of %d malformed inputs, want 3: %v", len(errs), errs)
	}
}

// TestServeHandlerOversize: a handler answer beyond the bounds becomes an
// error response, not a frame the guest would refuse.
func TestServeHandlerOversize(t *testing.T) {
	c, err := newClient(context.Background(), serve(t, bigCCEL{&fakeHandler{platform: attest.PlatformTDX}}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CCEL(context.Background()); err == nil || !strings.Contains(err.Error(), "ccel is") {
		t.Errorf("oversized ccel: %v", err)
	}
}

type bigCCEL struct{ *fakeHandler }

func (bigCCEL) CCEL(context.Context) ([]byte, error) { return make([]byte, attest.MaxBlobSize+1), nil }
