package tdxtest

import (
	"crypto/sha512"
	"encoding/binary"
)

// TCG event types used by the builder (TCG PC Client PFP §10.4.1).
const (
	EvNoAction            = 0x00000003
	EvSeparator           = 0x00000004
	EvEFIAction           = 0x80000007
	EvEFIBootServicesApp  = 0x80000003
	EvEFIVariableDriverCf = 0x80000001
	EvIPL                 = 0x0000000d
)

// algSHA384 is TPM_ALG_SHA384 (TPM 2.0 Part 2 §6.3).
const algSHA384 = 0x000c

// EventLog builds a CC event log (UEFI 2.10 §38.4 EFI_CC_MEASUREMENT_PROTOCOL:
// TCG crypto-agile format, SHA-384 only) and tracks the RTMR values it
// replays to. MR index 1 is RTMR0, …, 4 is RTMR3.
type EventLog struct {
	b    []byte
	rtmr [4][48]byte
}

// NewEventLog starts a log with the TCG Spec ID event (PFP §10.4.5.1),
// written in the SHA-1 TCG_PCClientPCREvent format as the spec requires.
func NewEventLog() *EventLog {
	var spec []byte
	spec = append(spec, []byte("Spec ID Event03\x00")...)
	spec = binary.LittleEndian.AppendUint32(spec, 0) // platformClass
	spec = append(spec, 0, 2, 0, 2)                  // minor, major, errata, uintnSize
	spec = binary.LittleEndian.AppendUint32(spec, 1) // numberOfAlgorithms
	spec = binary.LittleEndian.AppendUint16(spec, algSHA384)
	spec = binary.LittleEndian.AppendUint16(spec, 48)
	spec = append(spec, 0) // vendorInfoSize

	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, EvNoAction)
	b = append(b, make([]byte, 20)...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)
	return &EventLog{b: b}
}

// Measure appends an event that extends MR mrIndex (1-4) with SHA-384(data).
func (l *EventLog) Measure(mrIndex, eventType uint32, data []byte) {
	d := sha512.Sum384(data)
	l.Append(mrIndex, eventType, d, data)
}

// Append appends an event with an explicit digest (which may disagree with
// data, as it does for events that measure something other than their data).
// EV_NO_ACTION events are logged but not extended.
func (l *EventLog) Append(mrIndex, eventType uint32, digest [48]byte, data []byte) {
	l.b = binary.LittleEndian.AppendUint32(l.b, mrIndex)
	l.b = binary.LittleEndian.AppendUint32(l.b, eventType)
	l.b = binary.LittleEndian.AppendUint32(l.b, 1)
	l.b = binary.LittleEndian.AppendUint16(l.b, algSHA384)
	l.b = append(l.b, digest[:]...)
	l.b = binary.LittleEndian.AppendUint32(l.b, uint32(len(data)))
	l.b = append(l.b, data...)
	if eventType == EvNoAction || mrIndex < 1 || mrIndex > 4 {
		return
	}
	r := &l.rtmr[mrIndex-1]
	*r = sha512.Sum384(append(r[:], digest[:]...))
}

// Bytes is the log as firmware leaves it in the CCEL area: the events
// followed by padding bytes (0xff), as Linux exposes it.
func (l *EventLog) Bytes(padding int) []byte {
	out := append([]byte(nil), l.b...)
	for range padding {
		out = append(out, 0xff)
	}
	return out
}

// RTMR is what the log replays to.
func (l *EventLog) RTMR() [4][48]byte { return l.rtmr }

// DefaultEventLog is a small boot: firmware config into RTMR0, a UKI into
// RTMR1, its command line into RTMR2, separators.
func DefaultEventLog() *EventLog {
	l := NewEventLog()
	l.Measure(1, EvEFIVariableDriverCf, []byte("SecureBoot=0"))
	l.Measure(1, EvSeparator, []byte{0, 0, 0, 0})
	l.Measure(2, EvEFIBootServicesApp, []byte("palisade.efi authenticode"))
	l.Measure(3, EvIPL, []byte("console=ttyS0 palisade.role=node"))
	l.Measure(2, EvEFIAction, []byte("Exit Boot Services Invocation"))
	return l
}
