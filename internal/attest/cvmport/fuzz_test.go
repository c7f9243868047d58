package cvmport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
)

func seedResponses(f *testing.F) {
	for _, p := range []response{
		{Op: opHello, Seq: 1, Platform: attest.PlatformSNP},
		{Op: opReport, Seq: 2, Report: make([]byte, 1184), Certs: []byte{1, 2}},
		{Op: opQuote, Seq: 3, Quote: []byte{3}},
		{Op: opCCEL, Seq: 4, CCEL: []byte{4}},
		{Op: opQuote, Seq: 5, Error: "refused"},
	} {
		b, err := p.encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(rawFrame(b))
	}
}

func seedRequests(f *testing.F) {
	for _, q := range []request{{Op: opHello, Seq: 1}, {Op: opReport, Seq: 2}, {Op: opQuote, Seq: 3}, {Op: opCCEL, Seq: 4}} {
		f.Add(q.encode())
		f.Add(rawFrame(q.encode()))
	}
}

// FuzzDecodeRequest: the host's parser of guest bytes never panics, and what
// it accepts encodes back to the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	seedRequests(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := decodeRequest(b)
		if err != nil {
			if !errors.Is(err, ErrMessage) {
				t.Fatalf("error %v is not ErrMessage", err)
			}
			return
		}
		if !bytes.Equal(q.encode(), b) {
			t.Fatalf("accepted %x, re-encodes as %x", b, q.encode())
		}
	})
}

// FuzzDecodeResponse: the guest's parser of host bytes never panics, and
// what it accepts encodes back within the bounds.
func FuzzDecodeResponse(f *testing.F) {
	seedResponses(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeResponse(b)
		if err != nil {
			if !errors.Is(err, ErrMessage) {
				t.Fatalf("error %v is not ErrMessage", err)
			}
			return
		}
		out, err := p.encode()
		if err != nil {
			t.Fatalf("accepted %+v does not encode: %v", p, err)
		}
		if _, err := decodeResponse(out); err != nil {
			t.Fatalf("re-encoded response refused: %v", err)
		}
	})
}

// FuzzReadFrame: any stream yields frames within the limit or a named error.
func FuzzReadFrame(f *testing.F) {
	seedRequests(f)
	seedResponses(f)
	f.Add([]byte("junkPCVM\x00\x00\x00\x01x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReader(bytes.NewReader(b))
		for range 64 {
			p, _, err := readFrame(br, maxRequest)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrFrame) {
					t.Fatalf("error %v is neither EOF nor ErrFrame", err)
				}
				return
			}
			if len(p) > maxRequest {
				t.Fatalf("frame of %d bytes over the limit", len(p))
			}
		}
	})
}

// script is a port whose host side is fixed bytes: what a hostile or broken
// host could send.
type script struct{ r io.Reader }

func (s *script) Read(b []byte) (int, error)  { return s.r.Read(b) }
func (s *script) Write(b []byte) (int, error) { return len(b), nil }
func (s *script) Close() error                { return nil }

// FuzzClient: a client reading arbitrary host bytes returns an error or a
// response, never panics.
func FuzzClient(f *testing.F) {
	seedResponses(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &Client{rwc: &script{bytes.NewReader(b)}, sem: make(chan struct{}, 1), platform: attest.PlatformTDX}
		c.br = bufio.NewReader(c.rwc)
		c.seq = 4 // the seeds answer seq 1-5
		ctx := context.Background()
		c.Quote(ctx, [64]byte{})
		c.CCEL(ctx)
	})
}
