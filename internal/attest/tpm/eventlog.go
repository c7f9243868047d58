package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// TCG algorithm identifiers (TPM 2.0 Part 2 §6.3) the event log uses.
const (
	algSHA1   = 0x0004
	algSHA256 = 0x000B
	algSHA384 = 0x000C
	algSHA512 = 0x000D
	algSM3    = 0x0012
)

// knownDigestSize pins the sizes of algorithms we know, so a Spec ID header
// cannot declare SHA-256 as 20 bytes and shift every later event.
var knownDigestSize = map[uint16]int{algSHA1: 20, algSHA256: 32, algSHA384: 48, algSHA512: 64, algSM3: 32}

// Event types the parser must recognise (PC Client PFP §10.4.1).
const evNoAction = 0x00000003

// numPCRs is the PC Client PCR count (PC Client PTP §4.6, 24 PCRs).
const numPCRs = 24

// Limits that keep a hostile log from costing much.
const (
	maxAlgorithms = 8
	maxDigestSize = 64
)

// specIDSignature opens the first event of a crypto-agile log (PFP §10.4.5.1).
var specIDSignature = []byte("Spec ID Event03\x00")

// startupLocalitySignature marks the EV_NO_ACTION event that sets PCR0's
// initial value (PFP §10.4.5.3).
var startupLocalitySignature = []byte("StartupLocality\x00")

// event is one TCG_PCR_EVENT2 (PFP §10.2.2).
type event struct {
	pcr     int
	typ     uint32
	digests map[uint16][]byte
	data    []byte
}

// logReader reads little-endian fields (PFP §10.2: the log is little-endian,
// unlike TPM structures) and remembers the first short read.
type logReader struct {
	b   []byte
	off int
	err error
}

func (r *logReader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("event log: %s at offset %d: need %d bytes, %d left", what, r.off, n, len(r.b)-r.off)
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *logReader) u8(what string) uint8 {
	p := r.take(1, what)
	if p == nil {
		return 0
	}
	return p[0]
}

func (r *logReader) u16(what string) uint16 {
	p := r.take(2, what)
	if p == nil {
		return 0
	}
	return binary.LittleEndian.Uint16(p)
}

func (r *logReader) u32(what string) uint32 {
	p := r.take(4, what)
	if p == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(p)
}

// parseEventLog parses a crypto-agile log: a Spec ID event in the SHA-1 log
// format (TCG_PCClientPCREvent, PFP §10.2.1), then TCG_PCR_EVENT2 records
// whose digest lists must name exactly the algorithms the header declared.
func parseEventLog(log []byte) (events []event, err error) {
	defer func() {
		// The parser is written not to panic; this keeps a bug from becoming a
		// crash of the verifier all the same.
		if p := recover(); p != nil {
			events, err = nil, fmt.Errorf("event log: parser panic: %v", p)
		}
	}()
	r := &logReader{b: log}
	algs, err := parseSpecID(r)
	if err != nil {
		return nil, err
	}
	for i := 0; r.off < len(r.b); i++ {
		ev, err := parseEvent2(r, algs, i)
		if err != nil {
			return nil, err
		}
		events = append(events, ev)
	}
	return events, nil
}

// digestAlg is one entry of the Spec ID event's digestSizes.
type digestAlg struct {
	id   uint16
	size int
}

func parseSpecID(r *logReader) ([]digestAlg, error) {
	pcr := r.u32("header pcr index")
	typ := r.u32("header event type")
	digest := r.take(20, "header SHA-1 digest")
	size := r.u32("header event size")
	if r.err != nil {
		return nil, r.err
	}
	if pcr != 0 || typ != evNoAction {
		return nil, fmt.Errorf("event log: first event is PCR %d type %#x, want the Spec ID event (PCR 0, EV_NO_ACTION)", pcr, typ)
	}
	if !bytes.Equal(digest, make([]byte, 20)) {
		return nil, errors.New("event log: Spec ID event digest is not zero")
	}
	body := r.take(int(min(size, uint32(len(r.b)))), "Spec ID event")
	if r.err != nil {
		return nil, r.err
	}
	if int(size) != len(body) {
		return nil, fmt.Errorf("event log: Spec ID event size %d exceeds the log", size)
	}
	h := &logReader{b: body}
	sig := h.take(16, "Spec ID signature")
	h.u32("platformClass")
	h.u8("specVersionMinor")
	major := h.u8("specVersionMajor")
	h.u8("specErrata")
	uintn := h.u8("uintnSize")
	n := h.u32("numberOfAlgorithms")
	if h.err != nil {
		return nil, h.err
	}
	if !bytes.Equal(sig, specIDSignature) {
		return nil, fmt.Errorf("event log: Spec ID signature %q, want %q (only crypto-agile logs are accepted)", sig, specIDSignature)
	}
	if major != 2 {
		return nil, fmt.Errorf("event log: Spec ID specVersionMajor %d, want 2", major)
	}
	if uintn != 1 && uintn != 2 {
		return nil, fmt.Errorf("event log: Spec ID uintnSize %d, want 1 or 2", uintn)
	}
	if n == 0 || n > maxAlgorithms {
		return nil, fmt.Errorf("event log: Spec ID numberOfAlgorithms %d, want 1-%d", n, maxAlgorithms)
	}
	algs := make([]digestAlg, 0, n)
	haveSHA256 := false
	for i := range int(n) {
		id := h.u16("digestSizes.algorithmId")
		sz := int(h.u16("digestSizes.digestSize"))
		if h.err != nil {
			return nil, h.err
		}
		if want, ok := knownDigestSize[id]; ok && want != sz {
			return nil, fmt.Errorf("event log: Spec ID algorithm %#04x has digest size %d, want %d", id, sz, want)
		}
		if sz == 0 || sz > maxDigestSize {
			return nil, fmt.Errorf("event log: Spec ID algorithm %#04x has digest size %d, want 1-%d", id, sz, maxDigestSize)
		}
		for _, a := range algs {
			if a.id == id {
				return nil, fmt.Errorf("event log: Spec ID algorithm %#04x listed twice (entry %d)", id, i)
			}
		}
		haveSHA256 = haveSHA256 || id == algSHA256
		algs = append(algs, digestAlg{id, sz})
	}
	vendor := int(h.u8("vendorInfoSize"))
	h.take(vendor, "vendorInfo")
	if h.err != nil {
		return nil, h.err
	}
	if h.off != len(h.b) {
		return nil, fmt.Errorf("event log: Spec ID event has %d trailing bytes", len(h.b)-h.off)
	}
	if !haveSHA256 {
		return nil, errors.New("event log: no SHA-256 bank in the Spec ID event")
	}
	return algs, nil
}

func parseEvent2(r *logReader, algs []digestAlg, i int) (event, error) {
	start := r.off
	pcr := r.u32("pcr index")
	typ := r.u32("event type")
	count := r.u32("digest count")
	if r.err != nil {
		return event{}, fmt.Errorf("event %d: %w", i, r.err)
	}
	if pcr >= numPCRs {
		return event{}, fmt.Errorf("event log: event %d at offset %d: PCR %d, want 0-%d", i, start, pcr, numPCRs-1)
	}
	if count != uint32(len(algs)) {
		return event{}, fmt.Errorf("event log: event %d at offset %d: %d digests, the Spec ID event declares %d", i, start, count, len(algs))
	}
	ev := event{pcr: int(pcr), typ: typ, digests: make(map[uint16][]byte, len(algs))}
	for range algs {
		id := r.u16("digest algorithm")
		if r.err != nil {
			return event{}, fmt.Errorf("event %d: %w", i, r.err)
		}
		size := 0
		for _, a := range algs {
			if a.id == id {
				size = a.size
			}
		}
		if size == 0 {
			return event{}, fmt.Errorf("event log: event %d at offset %d: digest algorithm %#04x not in the Spec ID event", i, start, id)
		}
		if _, dup := ev.digests[id]; dup {
			return event{}, fmt.Errorf("event log: event %d at offset %d: digest algorithm %#04x twice", i, start, id)
		}
		ev.digests[id] = r.take(size, "digest")
	}
	size := r.u32("event size")
	ev.data = r.take(int(min(size, uint32(len(r.b)+1))), "event data")
	if r.err != nil {
		return event{}, fmt.Errorf("event %d: %w", i, r.err)
	}
	return ev, nil
}

// initialPCR is a PCR's value after TPM2_Startup(CLEAR): zero, except the
// DRTM PCRs 17-22, which are all ones until a dynamic launch
// (PC Client PTP §4.6.2, Table "PCR Initial Values").
func initialPCR(i int) []byte {
	if i >= 17 && i <= 22 {
		return bytes.Repeat([]byte{0xff}, sha256.Size)
	}
	return make([]byte, sha256.Size)
}

// Replay parses a crypto-agile UEFI event log and returns what its SHA-256
// digests extend PCRs 0-23 to, starting from their reset values; PCRs without
// events keep those. EV_NO_ACTION events are not extended; a StartupLocality
// event sets PCR0's initial value (PFP §10.4.5.3). Event data is not
// interpreted: only the digests are, since only they are extended.
func Replay(log []byte) (map[int][]byte, error) {
	events, err := parseEventLog(log)
	if err != nil {
		return nil, err
	}
	pcrs := make(map[int][]byte, numPCRs)
	for i := range numPCRs {
		pcrs[i] = initialPCR(i)
	}
	extended := make(map[int]bool)
	for n, ev := range events {
		if ev.typ == evNoAction {
			if ev.pcr == 0 && bytes.HasPrefix(ev.data, startupLocalitySignature) {
				if len(ev.data) != len(startupLocalitySignature)+1 {
					return nil, fmt.Errorf("event log: event %d: StartupLocality event is %d bytes, want %d", n, len(ev.data), len(startupLocalitySignature)+1)
				}
				if extended[0] {
					return nil, fmt.Errorf("event log: event %d: StartupLocality after PCR0 was extended", n)
				}
				loc := ev.data[len(startupLocalitySignature)]
				switch loc {
				case 0, 3, 4:
					// Locality 3 is a CRTM started at locality 3; 4 an H-CRTM
					// sequence (PFP §10.4.5.3). Both show in PCR0's last byte.
					v := make([]byte, sha256.Size)
					v[sha256.Size-1] = loc
					pcrs[0] = v
				default:
					return nil, fmt.Errorf("event log: event %d: StartupLocality %d, want 0, 3 or 4", n, loc)
				}
			}
			continue
		}
		h := sha256.New()
		h.Write(pcrs[ev.pcr])
		h.Write(ev.digests[algSHA256])
		pcrs[ev.pcr] = h.Sum(nil)
		extended[ev.pcr] = true
	}
	return pcrs, nil
}
