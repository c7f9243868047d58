package admissionlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Type is the kind of a log record.
type Type string

// Record types (issue 8 §6: every admission, denial summary, revocation and
// replica join; plus the cluster's initialisation).
const (
	TypeInit        Type = "init"
	TypeAdmission   Type = "admission"
	TypeDenial      Type = "denial"
	TypeRevocation  Type = "revocation"
	TypeReplicaJoin Type = "replica-join"
)

var knownTypes = map[Type]bool{TypeInit: true, TypeAdmission: true, TypeDenial: true, TypeRevocation: true, TypeReplicaJoin: true}

// MaxRecordSize bounds one encoded record: leaves are served to clients
// and proofs, not bulk data.
const MaxRecordSize = 64 << 10

// Record is one entry of the admission log. Its leaf is the canonical JSON
// encoding (Marshal): fields in this declaration order, empty fields
// omitted, Attrs keys sorted, Time in UTC, no insignificant whitespace.
type Record struct {
	Type Type      `json:"type"`
	Time time.Time `json:"time"`
	// Node is the node ID the record is about (the admitted, denied or
	// revoked node, the joining replica).
	Node     string `json:"node,omitempty"`
	Role     string `json:"role,omitempty"`
	Profile  string `json:"profile,omitempty"`
	Platform string `json:"platform,omitempty"`
	// Claims is the hex SHA-256 claims digest the evidence was bound to
	// (docs/protocol.md §1).
	Claims string `json:"claims,omitempty"`
	// Class and Reason summarise a denial (attest.Class and its reason).
	Class  string `json:"class,omitempty"`
	Reason string `json:"reason,omitempty"`
	// SecurityVersion is the image security version of an admission, or
	// the revoked minimum of a revocation by security version.
	SecurityVersion uint64 `json:"security_version,omitempty"`
	// Attrs holds further facts (mesh address, LUKS UUIDs, source
	// address…); encoding/json sorts map keys, so they stay canonical.
	Attrs map[string]string `json:"attrs,omitempty"`
}

// Marshal returns the canonical encoding of r, the bytes that become its
// leaf. It checks what ParseRecord checks.
func (r Record) Marshal() ([]byte, error) {
	if !knownTypes[r.Type] {
		return nil, fmt.Errorf("audit record: unknown type %q", r.Type)
	}
	if r.Time.IsZero() {
		return nil, errors.New("audit record: zero time")
	}
	r.Time = r.Time.UTC()
	if len(r.Attrs) == 0 {
		r.Attrs = nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("audit record: %w", err)
	}
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("audit record: %d bytes exceed %d", len(b), MaxRecordSize)
	}
	return b, nil
}

// ParseRecord decodes a leaf. It accepts only the canonical encoding, so
// that a record has exactly one leaf and one leaf hash.
func ParseRecord(b []byte) (Record, error) {
	if len(b) > MaxRecordSize {
		return Record{}, fmt.Errorf("audit record: %d bytes exceed %d", len(b), MaxRecordSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("audit record: %w", err)
	}
	if dec.More() {
		return Record{}, errors.New("audit record: trailing data")
	}
	canon, err := r.Marshal()
	if err != nil {
		return Record{}, err
	}
	if !bytes.Equal(canon, b) {
		return Record{}, errors.New("audit record: not in canonical encoding")
	}
	return r, nil
}
