// Package inventory is the provisioner's durable record of machines, their
// boot events, profiles and accept rules, kept in bbolt; it decides which boot
// file a machine gets. It is not a trust decision: states are informational.
package inventory

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// State is where a machine is in its life, as far as the provisioner knows.
type State string

// States, in order. Attested and Joined are reported later by the cluster and
// are informational only: the provisioner is outside the trusted base.
const (
	Discovered State = "discovered"
	Accepted   State = "accepted"
	Booting    State = "booting"
	Attested   State = "attested"
	Joined     State = "joined"
	Failed     State = "failed"
)

// States lists every state, in display order.
var States = []State{Discovered, Accepted, Booting, Attested, Joined, Failed}

// ReportableStates are the states the cluster may report through the API.
var ReportableStates = []State{Attested, Joined, Failed}

// Platforms a profile may name (ARCHITECTURE §3).
var Platforms = []string{"tpm", "sev-snp", "tdx"}

// Roles a profile may name.
var Roles = []string{"control-plane", "worker"}

// Machine is one machine that asked for an address or a boot file.
type Machine struct {
	MAC         string    `json:"mac"`
	UUID        string    `json:"uuid,omitempty"`
	Arch        uint16    `json:"arch"`
	ArchName    string    `json:"arch_name"`
	VendorClass string    `json:"vendor_class,omitempty"`
	UserClass   string    `json:"user_class,omitempty"`
	Relay       string    `json:"relay,omitempty"`
	IP          string    `json:"ip,omitempty"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	State       State     `json:"state"`
	StateSince  time.Time `json:"state_since"`
	Profile     string    `json:"profile,omitempty"`
	AcceptedBy  string    `json:"accepted_by,omitempty"`
	// LastBoot is the file most recently offered to the machine.
	LastBoot string `json:"last_boot,omitempty"`
}

// EventKind says what produced an event.
type EventKind string

// Event kinds.
const (
	EventDHCP     EventKind = "dhcp"
	EventTFTP     EventKind = "tftp"
	EventHTTP     EventKind = "http"
	EventState    EventKind = "state"
	EventAccept   EventKind = "accept"
	EventAssign   EventKind = "assign"
	EventDiscover EventKind = "discover"
)

// Event is one entry of a machine's boot timeline.
type Event struct {
	Seq    uint64        `json:"seq"`
	Time   time.Time     `json:"time"`
	MAC    string        `json:"mac,omitempty"`
	Kind   EventKind     `json:"kind"`
	Detail string        `json:"detail,omitempty"`
	File   string        `json:"file,omitempty"`
	Bytes  int64         `json:"bytes,omitempty"`
	Took   time.Duration `json:"took_ns,omitempty"`
	Remote string        `json:"remote,omitempty"`
	Error  string        `json:"error,omitempty"`
	State  State         `json:"state,omitempty"`
}

// Profile says what a machine boots and what it is told.
type Profile struct {
	Name string `json:"name"`
	// Image is the x64 UKI, a file name in the images directory.
	Image string `json:"image"`
	// ImageARM64 is the arm64 UKI; empty means arm64 machines get no answer.
	ImageARM64 string `json:"image_arm64,omitempty"`
	Platform   string `json:"platform"`
	Role       string `json:"role"`
	// KeydHints are keyd addresses handed to the node. Hints only: a wrong
	// one stops a boot but never yields a secret (ARCHITECTURE §1).
	KeydHints []string `json:"keyd_hints,omitempty"`
	// Cluster is the cluster ID handed to the node with the keyd hints
	// (option 224, see HintText). Also only a hint: the node's join
	// evidence binds the cluster ID it was built for (ARCHITECTURE §4.2).
	Cluster string `json:"cluster,omitempty"`
	// No kernel command line: a UKI's cmdline is a section of the image,
	// measured with it (PCR11/PCR9), and firmware passes none; anything a
	// profile added could never reach the node.
}

// FieldError names the bad field of an input; the API turns it into a 400.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ValidName reports whether s is usable as a profile or image name: it is
// also a file name under the TFTP and HTTP roots, so no separators, no dots
// at the start, printable ASCII only.
func ValidName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// Validate names the first bad field of p.
func (p *Profile) Validate() error {
	if !ValidName(p.Name) {
		return fieldErr("name", "%q is not a valid name (letters, digits, . _ -; up to 128)", p.Name)
	}
	if !ValidName(p.Image) {
		return fieldErr("image", "%q is not a valid image file name", p.Image)
	}
	if p.ImageARM64 != "" && !ValidName(p.ImageARM64) {
		return fieldErr("image_arm64", "%q is not a valid image file name", p.ImageARM64)
	}
	if !slices.Contains(Platforms, p.Platform) {
		return fieldErr("platform", "%q is not one of %s", p.Platform, strings.Join(Platforms, ", "))
	}
	if !slices.Contains(Roles, p.Role) {
		return fieldErr("role", "%q is not one of %s", p.Role, strings.Join(Roles, ", "))
	}
	if len(p.KeydHints) > MaxKeydHints {
		return fieldErr("keyd_hints", "%d addresses, the node takes at most %d", len(p.KeydHints), MaxKeydHints)
	}
	for i, h := range p.KeydHints {
		if err := checkKeydHint(h); err != nil {
			return fieldErr(fmt.Sprintf("keyd_hints[%d]", i), "%v", err)
		}
	}
	if p.Cluster != "" && !validCluster(p.Cluster) {
		return fieldErr("cluster", "%q: want 1-64 of [A-Za-z0-9._-]", p.Cluster)
	}
	if n := len(p.HintText()); n > MaxHintText {
		return fieldErr("keyd_hints", "keyd_hints and cluster make %d bytes of DHCP option 224, at most %d are sent", n, MaxHintText)
	}
	return nil
}

// Rule accepts machines automatically. Every criterion that is set must
// match; at least one must be set.
type Rule struct {
	Name string `json:"name"`
	// MACPrefix matches MACs starting with these bytes, e.g. "52:54:00".
	MACPrefix string `json:"mac_prefix,omitempty"`
	// MACFrom and MACTo bound an inclusive range of MACs.
	MACFrom string   `json:"mac_from,omitempty"`
	MACTo   string   `json:"mac_to,omitempty"`
	UUIDs   []string `json:"uuids,omitempty"`
	// Profile is assigned to machines the rule accepts (optional).
	Profile string `json:"profile,omitempty"`
}

// Validate names the first bad field of r.
func (r *Rule) Validate() error {
	if r.Name == "" {
		return fieldErr("name", "required")
	}
	if r.MACPrefix == "" && r.MACFrom == "" && r.MACTo == "" && len(r.UUIDs) == 0 {
		return fieldErr("mac_prefix", "a rule needs at least one of mac_prefix, mac_from/mac_to, uuids")
	}
	if r.MACPrefix != "" {
		if _, err := parseMACPrefix(r.MACPrefix); err != nil {
			return fieldErr("mac_prefix", "%v", err)
		}
	}
	if (r.MACFrom == "") != (r.MACTo == "") {
		return fieldErr("mac_to", "mac_from and mac_to go together")
	}
	if r.MACFrom != "" {
		from, err := net.ParseMAC(r.MACFrom)
		if err != nil || len(from) != 6 {
			return fieldErr("mac_from", "%q is not a 6-byte MAC", r.MACFrom)
		}
		to, err := net.ParseMAC(r.MACTo)
		if err != nil || len(to) != 6 {
			return fieldErr("mac_to", "%q is not a 6-byte MAC", r.MACTo)
		}
		if bytes.Compare(from, to) > 0 {
			return fieldErr("mac_to", "%s is below mac_from %s", r.MACTo, r.MACFrom)
		}
	}
	for i, u := range r.UUIDs {
		if _, err := NormalizeUUID(u); err != nil {
			return fieldErr(fmt.Sprintf("uuids[%d]", i), "%v", err)
		}
	}
	if r.Profile != "" && !ValidName(r.Profile) {
		return fieldErr("profile", "%q is not a valid profile name", r.Profile)
	}
	return nil
}

// Match reports whether the rule accepts a machine with this MAC and UUID
// (UUID normalized, may be empty).
func (r *Rule) Match(mac net.HardwareAddr, uuid string) bool {
	if r.MACPrefix != "" {
		p, err := parseMACPrefix(r.MACPrefix)
		if err != nil || !bytes.HasPrefix(mac, p) {
			return false
		}
	}
	if r.MACFrom != "" {
		from, err1 := net.ParseMAC(r.MACFrom)
		to, err2 := net.ParseMAC(r.MACTo)
		if err1 != nil || err2 != nil || bytes.Compare(mac, from) < 0 || bytes.Compare(mac, to) > 0 {
			return false
		}
	}
	if len(r.UUIDs) > 0 {
		if uuid == "" {
			return false
		}
		ok := false
		for _, u := range r.UUIDs {
			if n, err := NormalizeUUID(u); err == nil && n == uuid {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// parseMACPrefix parses 1 to 6 colon- or dash-separated hex octets.
func parseMACPrefix(s string) ([]byte, error) {
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == ':' || r == '-' })
	if len(parts) == 0 || len(parts) > 6 {
		return nil, fmt.Errorf("%q is not 1 to 6 hex octets", s)
	}
	out := make([]byte, len(parts))
	for i, p := range parts {
		if len(p) != 2 {
			return nil, fmt.Errorf("%q: octet %q is not two hex digits", s, p)
		}
		b, err := hex.DecodeString(p)
		if err != nil {
			return nil, fmt.Errorf("%q: octet %q is not hex", s, p)
		}
		out[i] = b[0]
	}
	return out, nil
}

// NormalizeMAC parses a 6-byte MAC in any form net.ParseMAC knows and returns
// its canonical lower-case colon form.
func NormalizeMAC(s string) (string, error) {
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return "", fmt.Errorf("%q is not a 6-byte MAC address", s)
	}
	return m.String(), nil
}

// NormalizeUUID parses a UUID written with or without dashes, any case.
func NormalizeUUID(s string) (string, error) {
	h := strings.ReplaceAll(strings.TrimSpace(s), "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 16 {
		return "", fmt.Errorf("%q is not a 16-byte UUID", s)
	}
	return formatUUID(b), nil
}

// formatUUID writes 16 bytes in the usual 8-4-4-4-12 form. The client
// machine identifier of RFC 4578 §2.3 (option 97, type 0) is such a UUID;
// other lengths are kept as hex.
func formatUUID(b []byte) string {
	if len(b) != 16 {
		return hex.EncodeToString(b)
	}
	x := hex.EncodeToString(b)
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// Client system architecture types, RFC 4578 §2.1 and the IANA "Processor
// Architecture Types" registry.
const (
	ArchBIOS         uint16 = 0
	ArchIA32UEFI     uint16 = 6
	ArchX64UEFI      uint16 = 7
	ArchX64UEFIAlt   uint16 = 9 // "EFI x86-64"; firmware sends 7 or 9
	ArchARM64UEFI    uint16 = 11
	ArchX64UEFIHTTP  uint16 = 16
	ArchARM64UEFIHTT uint16 = 19
)

// ArchName names an option 93 value for people.
func ArchName(a uint16) string {
	switch a {
	case ArchBIOS:
		return "bios"
	case ArchIA32UEFI:
		return "ia32-uefi"
	case ArchX64UEFI, ArchX64UEFIAlt:
		return "x64-uefi"
	case 10:
		return "arm32-uefi"
	case ArchARM64UEFI:
		return "arm64-uefi"
	case 15:
		return "ia32-uefi-http"
	case ArchX64UEFIHTTP:
		return "x64-uefi-http"
	case ArchARM64UEFIHTT:
		return "arm64-uefi-http"
	}
	return fmt.Sprintf("arch-%d", a)
}
