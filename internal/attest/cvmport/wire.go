package cvmport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Frame and message limits. A response carries at most one evidence blob of
// attest.MaxBlobSize plus small fields; a request is at most 64 bytes of
// report data.
const (
	wireVersion    = 1
	headerSize     = 8 // magic ‖ u32 length
	maxRequest     = 256
	maxResponse    = attest.MaxBlobSize + 128<<10
	maxPlatformLen = 16
	maxReportLen   = 4096 // ATTESTATION_REPORT is 1184 bytes (ABI Table 23)
	maxCertsLen    = 64 << 10
	maxQuoteLen    = 64 << 10 // a quote v4 with its PCK chain is ~5 KiB
	maxErrorLen    = 1024
	// maxSkip bounds the bytes a reader skips looking for the next magic.
	maxSkip = maxResponse + headerSize
)

var magic = [4]byte{'P', 'C', 'V', 'M'}

// Operations.
type op uint8

const (
	opHello  op = 1
	opReport op = 2
	opQuote  op = 3
	opCCEL   op = 4
	respBit     = 0x80
)

func (o op) String() string {
	switch o {
	case opHello:
		return "hello"
	case opReport:
		return "extended-report"
	case opQuote:
		return "quote"
	case opCCEL:
		return "ccel"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Field tags.
const (
	tagReportData = 1
	tagPlatform   = 2
	tagReport     = 3
	tagCerts      = 4
	tagQuote      = 5
	tagCCEL       = 6
	tagError      = 7
)

var tagNames = map[uint8]string{tagReportData: "report_data", tagPlatform: "platform", tagReport: "report",
	tagCerts: "certs", tagQuote: "quote", tagCCEL: "ccel", tagError: "error"}

func tagName(t uint8) string {
	if n, ok := tagNames[t]; ok {
		return n
	}
	return fmt.Sprintf("tag(%d)", t)
}

// Errors of the codec, one per failure class a caller may tell apart.
var (
	ErrFrame   = errors.New("cvmport: malformed frame")
	ErrMessage = errors.New("cvmport: malformed message")
)

type request struct {
	Op         op
	Seq        uint32
	ReportData [64]byte
}

type response struct {
	Op       op
	Seq      uint32
	Platform attest.Platform
	Report   []byte
	Certs    []byte
	Quote    []byte
	CCEL     []byte
	Error    string
}

// writeFrame writes payload as one frame with a single Write, so a port that
// is written atomically never interleaves half frames.
func writeFrame(w io.Writer, payload []byte) error {
	b := make([]byte, headerSize, headerSize+len(payload))
	copy(b, magic[:])
	binary.BigEndian.PutUint32(b[4:], uint32(len(payload)))
	b = append(b, payload...)
	_, err := w.Write(b)
	return err
}

// readFrame reads one frame of at most limit payload bytes. Bytes before a
// magic are skipped (at most maxSkip) and counted in skipped; the caller
// decides whether that is worth a log line. io.EOF is returned as is when the
// stream ends between frames.
func readFrame(r *bufio.Reader, limit int) (payload []byte, skipped int, err error) {
	for {
		head, err := r.Peek(len(magic))
		if err != nil {
			if errors.Is(err, io.EOF) && len(head) == 0 {
				return nil, skipped, io.EOF
			}
			if errors.Is(err, io.EOF) {
				return nil, skipped, fmt.Errorf("%w: stream ended inside a frame header (%d bytes)", ErrFrame, len(head))
			}
			return nil, skipped, err
		}
		if bytes.Equal(head, magic[:]) {
			break
		}
		// Skip to the next byte that could start a magic.
		n := 1
		if i := bytes.IndexByte(head[1:], magic[0]); i >= 0 {
			n = i + 1
		} else {
			n = len(head)
		}
		if skipped+n > maxSkip {
			return nil, skipped, fmt.Errorf("%w: no frame magic in %d bytes", ErrFrame, skipped)
		}
		r.Discard(n)
		skipped += n
	}
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, skipped, frameEOF("header", err)
	}
	n := binary.BigEndian.Uint32(h[4:])
	if int64(n) > int64(limit) {
		// The stream cannot be trusted past this: the caller must not
		// resynchronise into what may be this frame's payload.
		return nil, skipped, fmt.Errorf("%w: length %d, at most %d", ErrFrame, n, limit)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, skipped, frameEOF("payload", err)
	}
	return payload, skipped, nil
}

func frameEOF(part string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: stream ended inside the frame %s", ErrFrame, part)
	}
	return err
}

func appendField(b []byte, tag uint8, v []byte) []byte {
	b = append(b, tag)
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func (q *request) encode() []byte {
	b := []byte{wireVersion, byte(q.Op)}
	b = binary.BigEndian.AppendUint32(b, q.Seq)
	if q.Op == opReport || q.Op == opQuote {
		b = appendField(b, tagReportData, q.ReportData[:])
	}
	return b
}

// encode returns the payload, or an error naming the field that exceeds its
// bound (the host then answers with an error instead).
func (p *response) encode() ([]byte, error) {
	b := []byte{wireVersion, byte(p.Op) | respBit}
	b = binary.BigEndian.AppendUint32(b, p.Seq)
	for _, f := range []struct {
		tag uint8
		v   []byte
	}{{tagPlatform, []byte(p.Platform)}, {tagReport, p.Report}, {tagCerts, p.Certs},
		{tagQuote, p.Quote}, {tagCCEL, p.CCEL}, {tagError, []byte(p.Error)}} {
		if len(f.v) == 0 {
			continue
		}
		if len(f.v) > fieldLimit(f.tag) {
			return nil, fmt.Errorf("%w: %s response: %s is %d bytes, at most %d", ErrMessage, p.Op, tagName(f.tag), len(f.v), fieldLimit(f.tag))
		}
		b = appendField(b, f.tag, f.v)
	}
	if len(b) > maxResponse {
		return nil, fmt.Errorf("%w: %s response is %d bytes, at most %d", ErrMessage, p.Op, len(b), maxResponse)
	}
	return b, nil
}

func fieldLimit(tag uint8) int {
	switch tag {
	case tagReportData:
		return 64
	case tagPlatform:
		return maxPlatformLen
	case tagReport:
		return maxReportLen
	case tagCerts:
		return maxCertsLen
	case tagQuote:
		return maxQuoteLen
	case tagCCEL:
		return attest.MaxBlobSize
	case tagError:
		return maxErrorLen
	}
	return 0
}

// header reads version, kind and seq, and the fields, checking each field's
// bound and that no tag repeats.
func parse(b []byte) (kind uint8, seq uint32, fields map[uint8][]byte, err error) {
	if len(b) < 6 {
		return 0, 0, nil, fmt.Errorf("%w: %d bytes, shorter than the 6-byte header", ErrMessage, len(b))
	}
	if b[0] != wireVersion {
		return 0, 0, nil, fmt.Errorf("%w: version %d, want %d", ErrMessage, b[0], wireVersion)
	}
	kind, seq = b[1], binary.BigEndian.Uint32(b[2:6])
	fields = map[uint8][]byte{}
	for off := 6; off < len(b); {
		if len(b)-off < 5 {
			return kind, seq, nil, fmt.Errorf("%w: field at %d: truncated header", ErrMessage, off)
		}
		tag, n := b[off], binary.BigEndian.Uint32(b[off+1:])
		lim := fieldLimit(tag)
		if lim == 0 {
			return kind, seq, nil, fmt.Errorf("%w: field at %d: unknown %s", ErrMessage, off, tagName(tag))
		}
		if _, dup := fields[tag]; dup {
			return kind, seq, nil, fmt.Errorf("%w: field %s repeated", ErrMessage, tagName(tag))
		}
		if int64(n) > int64(lim) {
			return kind, seq, nil, fmt.Errorf("%w: field %s: %d bytes, at most %d", ErrMessage, tagName(tag), n, lim)
		}
		off += 5
		if int64(n) > int64(len(b)-off) {
			return kind, seq, nil, fmt.Errorf("%w: field %s: %d bytes, %d left", ErrMessage, tagName(tag), n, len(b)-off)
		}
		fields[tag] = b[off : off+int(n)]
		off += int(n)
	}
	return kind, seq, fields, nil
}

// decodeRequest parses a request payload. On error it still returns the op
// and seq it could read, so the host can address its error response.
func decodeRequest(b []byte) (request, error) {
	kind, seq, fields, err := parse(b)
	q := request{Op: op(kind), Seq: seq}
	if err != nil {
		return q, err
	}
	want := map[uint8]bool{}
	switch q.Op {
	case opHello, opCCEL:
	case opReport, opQuote:
		want[tagReportData] = true
	default:
		return q, fmt.Errorf("%w: request kind %#x is not an operation", ErrMessage, kind)
	}
	for tag := range fields {
		if !want[tag] {
			return q, fmt.Errorf("%w: %s request: field %s not allowed", ErrMessage, q.Op, tagName(tag))
		}
	}
	if want[tagReportData] {
		rd, ok := fields[tagReportData]
		if !ok || len(rd) != 64 {
			return q, fmt.Errorf("%w: %s request: report_data is %d bytes, want 64", ErrMessage, q.Op, len(rd))
		}
		copy(q.ReportData[:], rd)
	}
	return q, nil
}

// decodeResponse parses a response payload: the fields allowed for its op,
// the required ones present unless it carries an error.
func decodeResponse(b []byte) (response, error) {
	kind, seq, fields, err := parse(b)
	p := response{Op: op(kind &^ respBit), Seq: seq}
	if err != nil {
		return p, err
	}
	if kind&respBit == 0 {
		return p, fmt.Errorf("%w: kind %#x is not a response", ErrMessage, kind)
	}
	var required []uint8
	optional := map[uint8]bool{tagError: true}
	switch p.Op {
	case opHello:
		required = []uint8{tagPlatform}
	case opReport:
		required = []uint8{tagReport}
		optional[tagCerts] = true
	case opQuote:
		required = []uint8{tagQuote}
	case opCCEL:
		required = []uint8{tagCCEL}
	default:
		return p, fmt.Errorf("%w: response kind %#x is not an operation", ErrMessage, kind)
	}
	for _, t := range required {
		optional[t] = true
	}
	for tag := range fields {
		if !optional[tag] {
			return p, fmt.Errorf("%w: %s response: field %s not allowed", ErrMessage, p.Op, tagName(tag))
		}
	}
	if e, ok := fields[tagError]; ok {
		if len(fields) != 1 {
			return p, fmt.Errorf("%w: %s response: error together with other fields", ErrMessage, p.Op)
		}
		if len(e) == 0 {
			return p, fmt.Errorf("%w: %s response: empty error", ErrMessage, p.Op)
		}
		p.Error = string(e)
		return p, nil
	}
	for _, t := range required {
		if len(fields[t]) == 0 {
			return p, fmt.Errorf("%w: %s response: field %s missing", ErrMessage, p.Op, tagName(t))
		}
	}
	clone := func(t uint8) []byte { return bytes.Clone(fields[t]) }
	p.Platform = attest.Platform(fields[tagPlatform])
	p.Report, p.Certs, p.Quote, p.CCEL = clone(tagReport), clone(tagCerts), clone(tagQuote), clone(tagCCEL)
	if p.Op == opHello && p.Platform != attest.PlatformSNP && p.Platform != attest.PlatformTDX {
		return p, fmt.Errorf("%w: hello response: platform %q, want %q or %q", ErrMessage, p.Platform, attest.PlatformSNP, attest.PlatformTDX)
	}
	return p, nil
}
