package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// TestReplay checks Replay against tpmtest's independent replay, for the
// default boot and for boots starting at localities 3 and 4.
func TestReplay(t *testing.T) {
	for name, events := range map[string][]tpmtest.Event{
		"default":    tpmtest.DefaultBoot().Events(),
		"locality-3": append([]tpmtest.Event{tpmtest.StartupLocality(3)}, tpmtest.DefaultBoot().Events()[1:]...),
		"locality-4": append([]tpmtest.Event{tpmtest.StartupLocality(4)}, tpmtest.DefaultBoot().Events()[1:]...),
		"no-events":  nil,
	} {
		t.Run(name, func(t *testing.T) {
			l, err := tpmtest.BuildLog(events)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Replay(l.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(l.PCRs, got); diff != "" {
				t.Errorf("Replay (-tpmtest +got):\n%s", diff)
			}
		})
	}
	// Locality 3 changes PCR0 and only PCR0.
	l0, _ := tpmtest.BuildLog(tpmtest.DefaultBoot().Events())
	l3, _ := tpmtest.BuildLog(append([]tpmtest.Event{tpmtest.StartupLocality(3)}, tpmtest.DefaultBoot().Events()[1:]...))
	r0, _ := Replay(l0.Bytes)
	r3, _ := Replay(l3.Bytes)
	if bytes.Equal(r0[0], r3[0]) || !bytes.Equal(r0[4], r3[4]) {
		t.Error("StartupLocality 3 did not change PCR0 alone")
	}
}

// TestReplayRejects checks logs that must not replay.
func TestReplayRejects(t *testing.T) {
	sep := tpmtest.Event{PCR: 0, Type: tpmtest.EvSeparator, Data: []byte{0, 0, 0, 0}}
	for name, events := range map[string][]tpmtest.Event{
		"locality-after-pcr0": {sep, tpmtest.StartupLocality(3)},
		"locality-2":          {tpmtest.StartupLocality(2)},
		"locality-long":       {{PCR: 0, Type: tpmtest.EvNoAction, Data: []byte("StartupLocality\x00\x03\x00")}},
	} {
		t.Run(name, func(t *testing.T) {
			l, err := tpmtest.BuildLog(events)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Replay(l.Bytes); err == nil {
				t.Fatal("replayed")
			}
		})
	}
	t.Run("sha1-only", func(t *testing.T) {
		// A crypto-agile log with only a SHA-1 bank: nothing to replay the
		// SHA-256 PCRs with.
		var b []byte
		le := func(v uint32) { b = binary.LittleEndian.AppendUint32(b, v) }
		spec := append([]byte("Spec ID Event03\x00"), 0, 0, 0, 0, 0, 2, 0, 2, 1, 0, 0, 0, 0x04, 0, 20, 0, 0)
		le(0)
		le(evNoAction)
		b = append(b, make([]byte, 20)...)
		le(uint32(len(spec)))
		b = append(b, spec...)
		le(4)
		le(uint32(tpmtest.EvSeparator))
		le(1)
		b = append(b, 0x04, 0)
		b = append(b, make([]byte, 20)...)
		le(0)
		if _, err := Replay(b); err == nil {
			t.Fatal("replayed")
		}
	})
	good, _ := tpmtest.BuildLog(tpmtest.DefaultBoot().Events())
	for name, mutate := range map[string]func([]byte) []byte{
		"empty": func([]byte) []byte { return nil },
		"sha1-log": func(b []byte) []byte {
			return bytes.Replace(b, []byte("Spec ID Event03"), []byte("Spec ID Event02"), 1)
		},
		"trailing":   func(b []byte) []byte { return append(b, 0, 0) },
		"pcr-24":     func(b []byte) []byte { return setU32(b, firstEvent(b), 24) },
		"count-3":    func(b []byte) []byte { return setU32(b, firstEvent(b)+8, 3) },
		"huge-event": func(b []byte) []byte { return setU32(b, firstEvent(b)+12+2+20+2+32, 0xFFFFFFF0) },
		"no-sha256": func(b []byte) []byte {
			// Declare SHA-384 where SHA-256 was.
			i := bytes.Index(b, []byte{0x0B, 0x00, 32, 0x00})
			return append(append(bytes.Clone(b[:i]), 0x0C, 0x00, 48, 0x00), b[i+4:]...)
		},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Replay(mutate(bytes.Clone(good.Bytes))); err == nil {
				t.Fatal("replayed")
			}
		})
	}
}

// firstEvent is the offset of the first TCG_PCR_EVENT2 of a tpmtest log.
func firstEvent(b []byte) int {
	size := int(b[28]) | int(b[29])<<8 | int(b[30])<<16 | int(b[31])<<24
	return 32 + size
}

func setU32(b []byte, off int, v uint32) []byte {
	b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	return b
}

// TestReplayIsSHA256Extend checks one event by hand: PCR = SHA-256(0³² || d).
func TestReplayIsSHA256Extend(t *testing.T) {
	d := sha256.Sum256([]byte("x"))
	l, err := tpmtest.BuildLog([]tpmtest.Event{{PCR: 9, Type: tpmtest.EvIPL, SHA256: d[:], SHA1: make([]byte, 20)}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Replay(l.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(got[9], want[:]) {
		t.Fatalf("PCR9 %x, want %x", got[9], want)
	}
	if !bytes.Equal(got[17], bytes.Repeat([]byte{0xff}, 32)) || !bytes.Equal(got[0], make([]byte, 32)) {
		t.Fatal("reset values wrong")
	}
}
