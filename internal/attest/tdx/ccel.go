package tdx

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	evNoAction = 0x00000003
	// algSHA384 is TPM_ALG_SHA384 (TPM 2.0 Part 2 §6.3).
	algSHA384 = 0x000c
	// maxEvents bounds the work one log can cause; real TDVF logs have
	// a few hundred events.
	maxEvents = 1 << 14
	// maxAlgs bounds the spec ID event's algorithm list.
	maxAlgs = 16
)

var specIDSignature = []byte("Spec ID Event03\x00")

// Replay parses a CC event log and returns the values RTMR0-3 replay to.
//
// Format: TCG PC Client PFP §10.2 (crypto-agile log): a first event in the
// SHA-1 TCG_PCClientPCREvent format carrying the TCG_EfiSpecIDEvent (the list
// of digest algorithms and sizes), then TCG_PCR_EVENT2 records. In a CC event
// log the "PCRIndex" field is the CC measurement register index (UEFI 2.10
// §38.4.1 EFI_CC_MEASUREMENT_PROTOCOL; TDX guest-host communication
// interface §4.3.4): 0 is MRTD (never extended by events), 1-4 are
// RTMR0-RTMR3. Each register starts at zero and extends as
// RTMR = SHA-384(RTMR ‖ digest). EV_NO_ACTION events are not extended
// (PFP §10.4.1). The area after the last event is padding: 0xff bytes as
// TDVF initialises it (or zeros); a record starting with index 0xffffffff or
// an all-padding remainder ends the log.
func Replay(log []byte) (rtmr [4][48]byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("CC event log: parser panic: %v", r)
		}
	}()
	r := reader{b: log}
	// First event: PCRIndex, EventType, SHA-1 digest (20), EventSize, Event.
	idx, typ := r.u32(), r.u32()
	r.skip(20)
	spec := r.bytes(int(r.u32()))
	if r.err != nil {
		return rtmr, fmt.Errorf("CC event log: spec ID event: %w", r.err)
	}
	if idx != 0 || typ != evNoAction || !bytes.HasPrefix(spec, specIDSignature) {
		return rtmr, errors.New("CC event log: first event is not a TCG Spec ID Event03")
	}
	sizes, err := specAlgs(spec)
	if err != nil {
		return rtmr, err
	}
	if sizes[algSHA384] != 48 {
		return rtmr, errors.New("CC event log: spec ID event lists no SHA-384 bank")
	}
	for n := 1; ; n++ {
		if r.rest() == 0 || r.padding() {
			return rtmr, nil
		}
		if n > maxEvents {
			return rtmr, fmt.Errorf("CC event log: more than %d events", maxEvents)
		}
		off := r.off
		mr, typ := r.u32(), r.u32()
		if mr == 0xffffffff {
			return rtmr, nil
		}
		count := r.u32()
		if r.err == nil && (count == 0 || count > maxAlgs) {
			return rtmr, fmt.Errorf("CC event log: event %d at %#x: %d digests", n, off, count)
		}
		var d384 []byte
		for i := uint32(0); i < count && r.err == nil; i++ {
			alg := r.u16()
			size, ok := sizes[alg]
			if r.err == nil && !ok {
				return rtmr, fmt.Errorf("CC event log: event %d at %#x: digest algorithm %#04x not in spec ID event", n, off, alg)
			}
			d := r.bytes(int(size))
			if alg == algSHA384 {
				d384 = d
			}
		}
		r.bytes(int(r.u32())) // event data: only its digest is extended
		if r.err != nil {
			return rtmr, fmt.Errorf("CC event log: event %d at %#x: %w", n, off, r.err)
		}
		if typ == evNoAction {
			continue
		}
		if mr < 1 || mr > 4 {
			return rtmr, fmt.Errorf("CC event log: event %d at %#x: MR index %d, want 1-4 (RTMR0-3)", n, off, mr)
		}
		if d384 == nil {
			return rtmr, fmt.Errorf("CC event log: event %d at %#x: no SHA-384 digest", n, off)
		}
		reg := &rtmr[mr-1]
		h := sha512.New384()
		h.Write(reg[:])
		h.Write(d384)
		h.Sum(reg[:0])
	}
}

// specAlgs reads the digest sizes of TCG_EfiSpecIDEvent (PFP §10.4.5.1).
func specAlgs(spec []byte) (map[uint16]uint16, error) {
	r := reader{b: spec}
	r.skip(len(specIDSignature))
	r.u32()   // platformClass
	r.skip(4) // specVersionMinor, specVersionMajor, specErrata, uintnSize
	n := r.u32()
	if r.err == nil && (n == 0 || n > maxAlgs) {
		return nil, fmt.Errorf("CC event log: spec ID event lists %d algorithms", n)
	}
	sizes := map[uint16]uint16{}
	for range n {
		alg, size := r.u16(), r.u16()
		if r.err != nil {
			break
		}
		if size == 0 || size > 64 {
			return nil, fmt.Errorf("CC event log: spec ID event: algorithm %#04x has digest size %d", alg, size)
		}
		sizes[alg] = size
	}
	if r.err != nil {
		return nil, fmt.Errorf("CC event log: spec ID event: %w", r.err)
	}
	return sizes, nil
}

// reader reads little-endian fields and remembers the first error.
type reader struct {
	b   []byte
	off int
	err error
}

var errShort = errors.New("truncated")

func (r *reader) rest() int { return len(r.b) - r.off }

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > r.rest() {
		r.err = fmt.Errorf("%w: want %d bytes at %#x, have %d", errShort, n, r.off, r.rest())
		return nil
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b
}

func (r *reader) skip(n int) { r.bytes(n) }

func (r *reader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// padding reports whether the rest is all 0xff or all 0x00. Only a rest that
// starts like padding is scanned, so a long log stays linear.
func (r *reader) padding() bool {
	rest := r.b[r.off:]
	head := rest[:min(len(rest), 8)]
	for _, c := range []string{"\xff", "\x00"} {
		if len(bytes.Trim(head, c)) == 0 && len(bytes.Trim(rest, c)) == 0 {
			return true
		}
	}
	return false
}
