package tdx_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

// FuzzQuote feeds arbitrary bytes as the quote to the full verification
// entry: it must never panic, and nothing but the genuine quote (plus zero
// padding) may verify.
func FuzzQuote(f *testing.F) {
	fx := fixture(f)
	b := tdxtest.Binding(3)
	ev := evidence(f, fx, b)
	good := ev.Blobs[tdx.BlobQuote]
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(good[:tdxtest.HeaderSize+tdxtest.BodySize+4+128+6])
	f.Add(append(append([]byte(nil), good...), 0, 0))
	f.Add([]byte{4, 0, 2, 0, 0x81, 0, 0, 0})
	v := verifierFor(fx)
	in := attest.Input{Binding: b, Reference: fx.Reference()}
	ccel := ev.Blobs[tdx.BlobCCEL]
	f.Fuzz(func(t *testing.T, q []byte) {
		_, _ = tdx.ParseQuote(q)
		e := &attest.Evidence{Platform: attest.PlatformTDX, Blobs: map[string][]byte{tdx.BlobQuote: q, tdx.BlobCCEL: ccel}}
		_, err := v.Verify(context.Background(), e, in)
		if err == nil && !bytes.Equal(bytes.TrimRight(q, "\x00"), bytes.TrimRight(good, "\x00")) {
			t.Fatalf("a changed quote verified: %x", q)
		}
		if err != nil && attest.ClassOf(err) == attest.ClassInternal {
			t.Fatalf("internal error on input: %v", err)
		}
	})
}

// FuzzCCEL feeds arbitrary bytes to the event log replay: it must never
// panic, and a log that replays must replay deterministically.
func FuzzCCEL(f *testing.F) {
	l := tdxtest.DefaultEventLog()
	f.Add(l.Bytes(0))
	f.Add(l.Bytes(64))
	f.Add(l.Bytes(0)[:100])
	f.Add(tdxtest.NewEventLog().Bytes(0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, log []byte) {
		r1, err1 := tdx.Replay(log)
		r2, err2 := tdx.Replay(log)
		if (err1 == nil) != (err2 == nil) || r1 != r2 {
			t.Fatalf("replay not deterministic: %v %v", err1, err2)
		}
	})
}

func TestReplayMatchesBuilder(t *testing.T) {
	l := tdxtest.DefaultEventLog()
	l.Append(2, tdxtest.EvNoAction, [48]byte{1}, []byte("not extended"))
	for _, pad := range []int{0, 1, 4096} {
		got, err := tdx.Replay(l.Bytes(pad))
		if err != nil {
			t.Fatalf("padding %d: %v", pad, err)
		}
		if got != l.RTMR() {
			t.Errorf("padding %d: replay %x, builder %x", pad, got, l.RTMR())
		}
	}
	zeroPad := append(l.Bytes(0), make([]byte, 100)...)
	if got, err := tdx.Replay(zeroPad); err != nil || got != l.RTMR() {
		t.Errorf("zero padding: %x, %v", got, err)
	}
	// MR index 0 (MRTD) is never extended by an event.
	bad := tdxtest.NewEventLog()
	bad.Measure(0, tdxtest.EvIPL, []byte("x"))
	if _, err := tdx.Replay(bad.Bytes(0)); err == nil {
		t.Error("event for MR index 0 replayed")
	}
	bad = tdxtest.NewEventLog()
	bad.Measure(5, tdxtest.EvIPL, []byte("x"))
	if _, err := tdx.Replay(bad.Bytes(0)); err == nil {
		t.Error("event for MR index 5 replayed")
	}
}
