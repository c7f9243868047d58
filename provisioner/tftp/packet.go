package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Opcodes, RFC 1350 §5 and RFC 2347 (OACK).
const (
	opRRQ   uint16 = 1
	opWRQ   uint16 = 2
	opDATA  uint16 = 3
	opACK   uint16 = 4
	opERROR uint16 = 5
	opOACK  uint16 = 6
)

// Error codes, RFC 1350 appendix and RFC 2347 (code 8).
const (
	errNotDefined   uint16 = 0
	errNotFound     uint16 = 1
	errAccess       uint16 = 2
	errIllegalOp    uint16 = 4
	errUnknownTID   uint16 = 5
	errOptionRefuse uint16 = 8
)

const (
	// maxRequestLen is the largest request packet accepted (RFC 2347:
	// "the maximum size of a request packet is 512 octets").
	maxRequestLen = 512
	// maxOptions bounds option floods; RFC 2347 defines no limit, real
	// clients send at most four or five.
	maxOptions = 16
	// Block size bounds, RFC 2348.
	minBlockSize = 8
	maxBlockSize = 65464
	// Window size bounds, RFC 7440 §3.
	maxWindowSize = 65535
	// defaultBlockSize is RFC 1350's fixed block size.
	defaultBlockSize = 512
)

// option is one name/value pair of a request, name lower-cased (RFC 2347:
// option names are case-insensitive).
type option struct{ name, value string }

// request is a parsed RRQ or WRQ.
type request struct {
	op   uint16
	file string
	mode string // lower-cased: "octet", "netascii" or "mail"
	opts []option
}

// errMalformed marks packets that are not valid TFTP; the caller counts them.
var errMalformed = errors.New("malformed packet")

// parseRequest parses an RRQ or WRQ (RFC 1350 §5, RFC 2347 "Packet formats").
// Every field must be NUL-terminated; options come in name/value pairs.
func parseRequest(b []byte) (request, error) {
	if len(b) < 2 {
		return request{}, fmt.Errorf("%w: %d bytes, no opcode", errMalformed, len(b))
	}
	op := binary.BigEndian.Uint16(b)
	if op != opRRQ && op != opWRQ {
		return request{}, fmt.Errorf("%w: opcode %d is not a request", errMalformed, op)
	}
	if len(b) > maxRequestLen {
		return request{}, fmt.Errorf("%w: request of %d bytes exceeds %d", errMalformed, len(b), maxRequestLen)
	}
	body := b[2:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return request{}, fmt.Errorf("%w: request not NUL-terminated", errMalformed)
	}
	fields := bytes.Split(body[:len(body)-1], []byte{0})
	if len(fields) < 2 {
		return request{}, fmt.Errorf("%w: missing mode", errMalformed)
	}
	if len(fields)%2 != 0 {
		return request{}, fmt.Errorf("%w: option %q has no value", errMalformed, fields[len(fields)-1])
	}
	r := request{op: op, file: string(fields[0]), mode: strings.ToLower(string(fields[1]))}
	if r.file == "" {
		return request{}, fmt.Errorf("%w: empty file name", errMalformed)
	}
	switch r.mode {
	case "octet", "netascii", "mail":
	default:
		return request{}, fmt.Errorf("%w: unknown mode %q", errMalformed, fields[1])
	}
	if (len(fields)-2)/2 > maxOptions {
		return request{}, fmt.Errorf("%w: %d options exceed %d", errMalformed, (len(fields)-2)/2, maxOptions)
	}
	seen := map[string]bool{}
	for i := 2; i+1 < len(fields); i += 2 {
		name := strings.ToLower(string(fields[i]))
		if name == "" {
			return request{}, fmt.Errorf("%w: empty option name", errMalformed)
		}
		if seen[name] {
			continue // RFC 2347 is silent; the first occurrence wins
		}
		seen[name] = true
		r.opts = append(r.opts, option{name: name, value: string(fields[i+1])})
	}
	return r, nil
}

// negotiated is what the server accepts of a request's options.
type negotiated struct {
	blksize int
	window  int
	timeout int  // seconds, 0 = server default
	tsize   bool // client asked for tsize
	oack    []option
}

// limits caps what a client may negotiate.
type limits struct {
	maxBlock  int
	maxWindow int
}

// negotiate applies RFC 2348 (blksize), RFC 2349 (timeout, tsize) and
// RFC 7440 (windowsize) to the request's options. Unknown options and
// invalid values are left out of the OACK, as RFC 2347 requires. tsize is
// filled in by the caller once the file size is known.
func negotiate(r request, lim limits) negotiated {
	n := negotiated{blksize: defaultBlockSize, window: 1}
	for _, o := range r.opts {
		switch o.name {
		case "blksize":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < minBlockSize || v > maxBlockSize {
				continue
			}
			v = min(v, lim.maxBlock)
			n.blksize = v
			n.oack = append(n.oack, option{"blksize", strconv.Itoa(v)})
		case "windowsize":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < 1 || v > maxWindowSize {
				continue
			}
			v = min(v, lim.maxWindow)
			n.window = v
			n.oack = append(n.oack, option{"windowsize", strconv.Itoa(v)})
		case "timeout":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < 1 || v > 255 {
				continue
			}
			n.timeout = v
			n.oack = append(n.oack, option{"timeout", strconv.Itoa(v)})
		case "tsize":
			// RFC 2349: a read request carries "0"; the server answers the size.
			if o.value != "0" || r.mode != "octet" {
				continue
			}
			n.tsize = true
		}
	}
	return n
}

// appendOACK encodes an option acknowledgment (RFC 2347).
func appendOACK(b []byte, opts []option) []byte {
	b = binary.BigEndian.AppendUint16(b, opOACK)
	for _, o := range opts {
		b = append(b, o.name...)
		b = append(b, 0)
		b = append(b, o.value...)
		b = append(b, 0)
	}
	return b
}

// appendError encodes an ERROR packet (RFC 1350 §5).
func appendError(b []byte, code uint16, msg string) []byte {
	b = binary.BigEndian.AppendUint16(b, opERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	b = append(b, strings.ReplaceAll(msg, "\x00", "")...)
	return append(b, 0)
}

// reply is a packet a client sends during a read transfer.
type reply struct {
	op    uint16
	block uint16 // ACK
	code  uint16 // ERROR
	msg   string // ERROR
}

// parseReply parses an ACK or ERROR sent to a transfer's port. Anything else
// is malformed for a read transfer.
func parseReply(b []byte) (reply, error) {
	if len(b) < 4 {
		return reply{}, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}
	op := binary.BigEndian.Uint16(b)
	switch op {
	case opACK:
		if len(b) != 4 {
			return reply{}, fmt.Errorf("%w: ACK of %d bytes", errMalformed, len(b))
		}
		return reply{op: op, block: binary.BigEndian.Uint16(b[2:])}, nil
	case opERROR:
		msg := b[4:]
		if i := bytes.IndexByte(msg, 0); i >= 0 {
			msg = msg[:i]
		}
		if len(msg) > 255 {
			msg = msg[:255]
		}
		return reply{op: op, code: binary.BigEndian.Uint16(b[2:]), msg: strings.ToValidUTF8(string(msg), "?")}, nil
	default:
		return reply{}, fmt.Errorf("%w: opcode %d during a read transfer", errMalformed, op)
	}
}
