package tpmtest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unicode/utf16"

	"github.com/palisade-cc/palisade/internal/attest"
)

// Event types (TCG PC Client Platform Firmware Profile §10.4.1).
const (
	EvPostCode                   uint32 = 0x00000001
	EvNoAction                   uint32 = 0x00000003
	EvSeparator                  uint32 = 0x00000004
	EvSCRTMVersion               uint32 = 0x00000008
	EvIPL                        uint32 = 0x0000000D
	EvEFIVariableDriverConfig    uint32 = 0x80000001
	EvEFIVariableBoot            uint32 = 0x80000002
	EvEFIBootServicesApplication uint32 = 0x80000003
	EvEFIAction                  uint32 = 0x80000007
	EvEFIPlatformFirmwareBlob    uint32 = 0x80000008
)

// Event is one log entry to build. SHA1 and SHA256 are what is extended; nil
// means the hash of Data, which is what the PFP prescribes for most types
// (EV_SEPARATOR, EV_EFI_ACTION, EV_S_CRTM_VERSION …). For EV_NO_ACTION both
// are zero and nothing is extended.
type Event struct {
	PCR          int
	Type         uint32
	Data         []byte
	SHA1, SHA256 []byte
}

// Log is a built crypto-agile event log with its replayed values.
type Log struct {
	// Bytes is the log as securityfs would return it.
	Bytes []byte
	// Events are the entries with their digests filled in.
	Events []Event
	// PCRs are the SHA-256 values of PCRs 0-23 after the log; SHA1PCRs the
	// SHA-1 bank's.
	PCRs, SHA1PCRs map[int][]byte
}

// StartupLocality is the EV_NO_ACTION event that starts PCR0 at loc
// (PFP §10.4.5.3); it must come before any PCR0 measurement.
func StartupLocality(loc byte) Event {
	return Event{PCR: 0, Type: EvNoAction, Data: append([]byte("StartupLocality\x00"), loc)}
}

// BuildLog encodes events as a crypto-agile log (PFP §10.2): the Spec ID
// event in SHA-1 format declaring SHA-1 and SHA-256, then TCG_PCR_EVENT2
// records. It replays the log with its own code, independent of the
// verifier's, so tests compare two implementations.
func BuildLog(events []Event) (*Log, error) {
	var b bytes.Buffer
	le := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }

	// Spec ID event, TCG_EfiSpecIDEvent (PFP §10.4.5.1).
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	_ = binary.Write(&spec, binary.LittleEndian, uint32(0)) // platformClass: client
	spec.Write([]byte{0, 2, 0, 2})                          // version 2.0, errata 0, uintnSize 2 (64-bit)
	_ = binary.Write(&spec, binary.LittleEndian, []uint32{2})
	_ = binary.Write(&spec, binary.LittleEndian, []uint16{0x0004, 20, 0x000B, 32})
	spec.WriteByte(0) // vendorInfoSize
	le(uint32(0))
	le(EvNoAction)
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())

	l := &Log{PCRs: map[int][]byte{}, SHA1PCRs: map[int][]byte{}}
	for i := range 24 {
		l.PCRs[i] = make([]byte, 32)
		l.SHA1PCRs[i] = make([]byte, 20)
		if i >= 17 && i <= 22 {
			l.PCRs[i] = bytes.Repeat([]byte{0xff}, 32)
			l.SHA1PCRs[i] = bytes.Repeat([]byte{0xff}, 20)
		}
	}
	for i, ev := range events {
		if ev.PCR < 0 || ev.PCR > 23 {
			return nil, fmt.Errorf("event %d: PCR %d, want 0-23", i, ev.PCR)
		}
		if ev.Type == EvNoAction {
			ev.SHA1, ev.SHA256 = make([]byte, 20), make([]byte, 32)
			if ev.PCR == 0 && bytes.HasPrefix(ev.Data, []byte("StartupLocality\x00")) && len(ev.Data) == 17 {
				l.PCRs[0] = make([]byte, 32)
				l.PCRs[0][31] = ev.Data[16]
				l.SHA1PCRs[0] = make([]byte, 20)
				l.SHA1PCRs[0][19] = ev.Data[16]
			}
		} else {
			if ev.SHA1 == nil {
				s := sha1.Sum(ev.Data)
				ev.SHA1 = s[:]
			}
			if ev.SHA256 == nil {
				s := sha256.Sum256(ev.Data)
				ev.SHA256 = s[:]
			}
			if len(ev.SHA1) != 20 || len(ev.SHA256) != 32 {
				return nil, fmt.Errorf("event %d: digests of %d and %d bytes, want 20 and 32", i, len(ev.SHA1), len(ev.SHA256))
			}
			s1 := sha1.Sum(append(bytes.Clone(l.SHA1PCRs[ev.PCR]), ev.SHA1...))
			l.SHA1PCRs[ev.PCR] = s1[:]
			s256 := sha256.Sum256(append(bytes.Clone(l.PCRs[ev.PCR]), ev.SHA256...))
			l.PCRs[ev.PCR] = s256[:]
		}
		le(uint32(ev.PCR))
		le(ev.Type)
		le(uint32(2))
		le(uint16(0x0004))
		b.Write(ev.SHA1)
		le(uint16(0x000B))
		b.Write(ev.SHA256)
		le(uint32(len(ev.Data)))
		b.Write(ev.Data)
		l.Events = append(l.Events, ev)
	}
	l.Bytes = b.Bytes()
	return l, nil
}

// Reference returns a TPM reference pinning the log's SHA-256 values of pcrs.
func (l *Log) Reference(profile string, pcrs ...int) *attest.Reference {
	r := &attest.Reference{Profile: profile, Platform: attest.PlatformTPM,
		TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{}}}
	for _, i := range pcrs {
		r.TPM.PCRs[i] = bytes.Clone(l.PCRs[i])
	}
	return r
}

// Section is one PE section systemd-stub measures into PCR11.
type Section struct {
	Name    string
	Content []byte
}

// Boot describes a synthetic UEFI boot of a UKI, the shape OVMF and
// systemd-stub produce: firmware into PCR0, boot variables into PCR1, secure
// boot state into PCR7, separators into PCR0-7, the loaded EFI applications
// into PCR4, the stub's sections into PCR11, command line and initrd into
// PCR9, ExitBootServices into PCR5.
type Boot struct {
	// Firmware is the content measured as the platform firmware blob.
	Firmware []byte
	// SecureBoot is the SecureBoot variable's value.
	SecureBoot bool
	// Apps are the Authenticode SHA-256 digests of the EFI applications
	// the firmware loaded, in order (the UKI, then its inner kernel).
	Apps [][]byte
	// Sections are the UKI sections the stub measured, in order.
	Sections []Section
	// Cmdline and Initrd are what lands in PCR9.
	Cmdline string
	Initrd  []byte
}

// DefaultBoot is a fixed synthetic boot of a UKI.
func DefaultBoot() Boot {
	uki := sha256.Sum256([]byte("palisade test UKI"))
	kernel := sha256.Sum256([]byte("palisade test kernel"))
	return Boot{
		Firmware: []byte("OVMF test firmware volume"),
		Apps:     [][]byte{uki[:], kernel[:]},
		Sections: []Section{{".linux", []byte("kernel image")}, {".osrel", []byte("ID=palisade\n")},
			{".cmdline", []byte("console=ttyS0")}, {".initrd", []byte("initramfs")}},
		Cmdline: "console=ttyS0",
		Initrd:  []byte("initramfs"),
	}
}

// utf16z encodes s as NUL-terminated UTF-16LE, as UEFI strings are.
func utf16z(s string) []byte {
	var b []byte
	for _, c := range utf16.Encode([]rune(s + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

// authenticodeSHA1 stands in for the SHA-1 Authenticode digest of an image
// known only by its SHA-256 one; any 20 bytes replay consistently.
func authenticodeSHA1(d []byte) []byte {
	s := sha1.Sum(d)
	return s[:]
}

// Events returns the boot's event sequence.
func (b Boot) Events() []Event {
	sep := []byte{0, 0, 0, 0}
	sb := byte(0)
	if b.SecureBoot {
		sb = 1
	}
	fw := sha256.Sum256(b.Firmware)
	fw1 := sha1.Sum(b.Firmware)
	blob := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 0xFFC00000), uint64(len(b.Firmware)))
	evs := []Event{
		StartupLocality(0),
		{PCR: 0, Type: EvSCRTMVersion, Data: utf16z("1.00")},
		{PCR: 0, Type: EvEFIPlatformFirmwareBlob, Data: blob, SHA1: fw1[:], SHA256: fw[:]},
		{PCR: 1, Type: EvEFIVariableBoot, Data: append(utf16z("BootOrder"), 0, 0)},
		{PCR: 7, Type: EvEFIVariableDriverConfig, Data: append(utf16z("SecureBoot"), sb)},
	}
	for pcr := range 8 {
		evs = append(evs, Event{PCR: pcr, Type: EvSeparator, Data: sep})
	}
	evs = append(evs, Event{PCR: 4, Type: EvEFIAction, Data: []byte("Calling EFI Application from Boot Option")})
	for i, app := range b.Apps {
		evs = append(evs, Event{PCR: 4, Type: EvEFIBootServicesApplication,
			Data: fmt.Appendf(nil, "image %d", i), SHA1: authenticodeSHA1(app), SHA256: app})
	}
	for _, s := range b.Sections {
		// systemd-stub measures the NUL-terminated name, then the content.
		evs = append(evs, Event{PCR: 11, Type: EvIPL, Data: []byte(s.Name + "\x00")})
		h := sha256.Sum256(s.Content)
		h1 := sha1.Sum(s.Content)
		evs = append(evs, Event{PCR: 11, Type: EvIPL, Data: []byte(s.Name), SHA1: h1[:], SHA256: h[:]})
	}
	if b.Cmdline != "" {
		evs = append(evs, Event{PCR: 9, Type: EvIPL, Data: utf16z(b.Cmdline)})
	}
	if b.Initrd != nil {
		h := sha256.Sum256(b.Initrd)
		h1 := sha1.Sum(b.Initrd)
		evs = append(evs, Event{PCR: 9, Type: EvIPL, Data: []byte("Linux initrd"), SHA1: h1[:], SHA256: h[:]})
	}
	evs = append(evs,
		Event{PCR: 5, Type: EvEFIAction, Data: []byte("Exit Boot Services Invocation")},
		Event{PCR: 5, Type: EvEFIAction, Data: []byte("Exit Boot Services Returned with Success")})
	return evs
}

// ReferencePCRs are the PCRs a reference built from a Boot pins: firmware
// and configuration (0-7), the loaded image (4), initrd and command line (9)
// and the stub's sections (11).
var ReferencePCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 9, 11}
