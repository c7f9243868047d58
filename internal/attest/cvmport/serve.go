package cvmport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Handler answers the guest's requests on the host: one method per request.
// An error goes back to the guest as the response's error text.
type Handler interface {
	// Platform answers hello: attest.PlatformSNP or attest.PlatformTDX.
	Platform() attest.Platform
	GetExtendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error)
	Quote(ctx context.Context, reportData [64]byte) ([]byte, error)
	CCEL(ctx context.Context) ([]byte, error)
}

// MalformedReporter may be implemented by a Handler to hear of each malformed
// request and each run of skipped bytes (the guest's side of the port is
// not trusted to be well-formed).
type MalformedReporter interface {
	Malformed(err error)
}

// Serve answers requests read from rw until rw ends (nil), ctx is done
// (ctx.Err()) or the stream cannot be read any more (an error wrapping
// ErrFrame or the I/O error). A malformed request is answered with an error
// response and serving goes on. When ctx is done, rw's read deadline is set
// to the past if it has one, else rw is closed if it is an io.Closer, so a
// blocked read returns.
func Serve(ctx context.Context, rw io.ReadWriter, h Handler) error {
	stop := context.AfterFunc(ctx, func() {
		if d, ok := rw.(interface{ SetReadDeadline(time.Time) error }); ok && d.SetReadDeadline(time.Unix(1, 0)) == nil {
			return
		}
		if c, ok := rw.(io.Closer); ok {
			c.Close()
		}
	})
	defer stop()
	report := func(err error) {
		if m, ok := h.(MalformedReporter); ok {
			m.Malformed(err)
		}
	}
	br := bufio.NewReaderSize(rw, maxRequest)
	for {
		b, skipped, err := readFrame(br, maxRequest)
		if skipped > 0 {
			report(fmt.Errorf("%w: skipped %d bytes before a frame magic", ErrFrame, skipped))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			report(err)
			return err
		}
		q, err := decodeRequest(b)
		var p response
		if err != nil {
			report(err)
			p = response{Op: q.Op, Seq: q.Seq, Error: truncate(err.Error())}
		} else {
			p = answer(ctx, h, q)
		}
		out, err := p.encode()
		if err != nil {
			// The handler's answer exceeds a bound: tell the guest.
			p = response{Op: q.Op, Seq: q.Seq, Error: truncate(err.Error())}
			out, err = p.encode()
			if err != nil {
				return err
			}
		}
		if err := writeFrame(rw, out); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
				return nil // the guest went away while its answer was made, as at EOF
			}
			return fmt.Errorf("cvmport: write %s response: %w", q.Op, err)
		}
	}
}

func answer(ctx context.Context, h Handler, q request) response {
	p := response{Op: q.Op, Seq: q.Seq}
	var err error
	switch q.Op {
	case opHello:
		p.Platform = h.Platform()
	case opReport:
		p.Report, p.Certs, err = h.GetExtendedReport(ctx, q.ReportData)
		if err == nil && len(p.Report) == 0 {
			err = errors.New("handler returned an empty report")
		}
	case opQuote:
		p.Quote, err = h.Quote(ctx, q.ReportData)
		if err == nil && len(p.Quote) == 0 {
			err = errors.New("handler returned an empty quote")
		}
	case opCCEL:
		p.CCEL, err = h.CCEL(ctx)
		if err == nil && len(p.CCEL) == 0 {
			err = errors.New("handler returned an empty CC event log")
		}
	}
	if err != nil {
		return response{Op: q.Op, Seq: q.Seq, Error: truncate(err.Error())}
	}
	return p
}

func truncate(s string) string {
	if s == "" {
		return "unspecified error"
	}
	if len(s) > maxErrorLen {
		return s[:maxErrorLen]
	}
	return s
}
