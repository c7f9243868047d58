package cvmport

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// PortName is the virtserialport name the emulator's QEMU arguments give the
// port (-device virtserialport,…,name=org.palisade.cvm.0).
const PortName = "org.palisade.cvm.0"

// ErrNotFound says the guest has no port named PortName: not an emulated CVM.
var ErrNotFound = errors.New("cvmport: no virtio-serial port named " + PortName)

// HelloTimeout bounds Open's hello exchange when ctx has no earlier deadline.
const HelloTimeout = 10 * time.Second

// maxStale bounds the responses to abandoned requests a client drops while
// waiting for its own.
const maxStale = 8

// Find returns the device of the port named PortName. The initramfs has no
// udev, so the /dev/virtio-ports/<name> links do not exist: the kernel's
// virtio_console exposes each port's name in /sys/class/virtio-ports/<dev>/name
// and the device node as /dev/<dev> (devtmpfs).
func Find() (string, error) { return findIn("/sys", "/dev") }

func findIn(sysRoot, devRoot string) (string, error) {
	dirs, err := filepath.Glob(filepath.Join(sysRoot, "class", "virtio-ports", "*", "name"))
	if err != nil {
		return "", err
	}
	sort.Strings(dirs)
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a port that went away while we looked
		}
		if strings.TrimRight(string(b), "\n") == PortName {
			return filepath.Join(devRoot, filepath.Base(filepath.Dir(p))), nil
		}
	}
	return "", ErrNotFound
}

// Client talks to the CVM emulator over the port. Calls are serialised: one
// request at a time. It implements snp.Transport (GetExtendedReport) and
// tdx.Transport (Quote).
type Client struct {
	rwc      io.ReadWriteCloser
	br       *bufio.Reader
	sem      chan struct{} // holds the port during one exchange
	seq      uint32        // guarded by sem
	platform attest.Platform
	// deadlines says whether rwc's SetDeadline works (an os.File in the
	// runtime poller, a net.Conn); otherwise an exchange runs in a
	// goroutine that the caller may abandon.
	deadlines bool
	closeOnce sync.Once
	closeErr  error
}

type deadliner interface{ SetDeadline(time.Time) error }

// Open opens the port at path (read-write; a character device) and runs the
// hello exchange, within ctx and at most HelloTimeout.
func Open(ctx context.Context, path string) (*Client, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("cvmport: open %s: %w", path, err)
	}
	c, err := newClient(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("cvmport: %s: %w", path, err)
	}
	return c, nil
}

// NewClient runs the hello exchange over an already open port (a net.Conn in
// host-side tests of the emulator; Open is the guest's path) and closes rwc
// if it fails. Deadlines are used if rwc has a working SetDeadline.
func NewClient(ctx context.Context, rwc io.ReadWriteCloser) (*Client, error) {
	return newClient(ctx, rwc)
}

// newClient runs the hello exchange over rwc and closes rwc if it fails.
func newClient(ctx context.Context, rwc io.ReadWriteCloser) (*Client, error) {
	var seed [4]byte
	if _, err := rand.Read(seed[:]); err != nil {
		rwc.Close()
		return nil, err
	}
	c := &Client{rwc: rwc, br: bufio.NewReaderSize(rwc, 64<<10), sem: make(chan struct{}, 1),
		seq: binary.BigEndian.Uint32(seed[:])}
	if d, ok := rwc.(deadliner); ok && d.SetDeadline(time.Time{}) == nil {
		c.deadlines = true
	}
	ctx, cancel := context.WithTimeout(ctx, HelloTimeout)
	defer cancel()
	p, err := c.exchange(ctx, request{Op: opHello})
	if err != nil {
		c.Close()
		return nil, err
	}
	c.platform = p.Platform
	return c, nil
}

// Platform is what the emulator emulates: attest.PlatformSNP or PlatformTDX.
func (c *Client) Platform() attest.Platform { return c.platform }

// GetExtendedReport asks for an SEV-SNP report whose REPORT_DATA is
// reportData, and the certificate table the emulated host supplies.
func (c *Client) GetExtendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error) {
	if c.platform != attest.PlatformSNP {
		return nil, nil, fmt.Errorf("cvmport: extended report: the emulator emulates %s, not %s", c.platform, attest.PlatformSNP)
	}
	p, err := c.exchange(ctx, request{Op: opReport, ReportData: reportData})
	if err != nil {
		return nil, nil, err
	}
	return p.Report, p.Certs, nil
}

// Quote asks for a TDX quote v4 whose REPORT_DATA is reportData.
func (c *Client) Quote(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if c.platform != attest.PlatformTDX {
		return nil, fmt.Errorf("cvmport: quote: the emulator emulates %s, not %s", c.platform, attest.PlatformTDX)
	}
	p, err := c.exchange(ctx, request{Op: opQuote, ReportData: reportData})
	if err != nil {
		return nil, err
	}
	return p.Quote, nil
}

// CCEL asks for the TDX CC event log, the bytes a TD reads from
// /sys/firmware/acpi/tables/data/CCEL on hardware.
func (c *Client) CCEL(ctx context.Context) ([]byte, error) {
	if c.platform != attest.PlatformTDX {
		return nil, fmt.Errorf("cvmport: ccel: the emulator emulates %s, not %s", c.platform, attest.PlatformTDX)
	}
	p, err := c.exchange(ctx, request{Op: opCCEL})
	if err != nil {
		return nil, err
	}
	return p.CCEL, nil
}

// Close closes the port. An exchange abandoned by its caller ends with it.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.rwc.Close() })
	return c.closeErr
}

type result struct {
	p   response
	err error
}

// exchange sends q and waits for its response within ctx.
func (c *Client) exchange(ctx context.Context, q request) (response, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return response{}, fmt.Errorf("cvmport: %s: port busy: %w", q.Op, ctx.Err())
	}
	c.seq++
	q.Seq = c.seq
	if !c.deadlines {
		// The port has no deadlines: run the exchange where the caller
		// may leave it; the next call waits for the port (sem) within
		// its own ctx.
		ch := make(chan result, 1)
		go func() {
			defer func() { <-c.sem }()
			p, err := c.roundTrip(q)
			ch <- result{p, err}
		}()
		select {
		case r := <-ch:
			return r.p, r.err
		case <-ctx.Done():
			return response{}, fmt.Errorf("cvmport: %s: %w", q.Op, ctx.Err())
		}
	}
	defer func() { <-c.sem }()
	d := c.rwc.(deadliner)
	dl, _ := ctx.Deadline() // zero: none
	if err := d.SetDeadline(dl); err != nil {
		return response{}, fmt.Errorf("cvmport: %s: set deadline: %w", q.Op, err)
	}
	var mu sync.Mutex
	done := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			d.SetDeadline(time.Unix(1, 0)) // in the past: unblocks I/O now
		}
	})
	p, err := c.roundTrip(q)
	mu.Lock()
	done = true
	mu.Unlock()
	stop()
	if err != nil && ctx.Err() != nil {
		return response{}, fmt.Errorf("cvmport: %s: %w (%v)", q.Op, ctx.Err(), err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The port's deadline (ctx's) passed a moment before ctx noticed.
		return response{}, fmt.Errorf("cvmport: %s: %w (%v)", q.Op, context.DeadlineExceeded, err)
	}
	return p, err
}

// roundTrip writes q and reads responses until the one with q's seq,
// dropping at most maxStale answers to requests given up on earlier.
func (c *Client) roundTrip(q request) (response, error) {
	if err := writeFrame(c.rwc, q.encode()); err != nil {
		return response{}, fmt.Errorf("cvmport: %s: write: %w", q.Op, err)
	}
	for range maxStale + 1 {
		b, _, err := readFrame(c.br, maxResponse)
		if errors.Is(err, io.EOF) {
			return response{}, fmt.Errorf("cvmport: %s: port closed by the host (is the emulator listening?): %w", q.Op, err)
		}
		if err != nil {
			return response{}, fmt.Errorf("cvmport: %s: read: %w", q.Op, err)
		}
		p, err := decodeResponse(b)
		if p.Seq != q.Seq {
			continue // an answer to an abandoned request, or garbage
		}
		if err != nil {
			return response{}, fmt.Errorf("cvmport: %s response: %w", q.Op, err)
		}
		if p.Op != q.Op {
			return response{}, fmt.Errorf("%w: %s request answered with %s", ErrMessage, q.Op, p.Op)
		}
		if p.Error != "" {
			return response{}, fmt.Errorf("cvmport: %s: emulator refused: %q", q.Op, p.Error)
		}
		return p, nil
	}
	return response{}, fmt.Errorf("cvmport: %s: %d responses to other requests, none to seq %d", q.Op, maxStale+1, q.Seq)
}
