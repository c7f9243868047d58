package inventory

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// NodeState is what a node says about its own boot (attestd's report on
// the boot HTTP listener). Untrusted and informational: a node on the boot
// network can say anything about itself, and it changes nothing the
// provisioner hands out.
type NodeState string

// Node states, in boot order.
const (
	NodeBooting  NodeState = "booting"
	NodeAttested NodeState = "attested"
	NodeUnlocked NodeState = "unlocked"
	NodeFailed   NodeState = "failed"
)

// NodeStates lists the states a node may report.
var NodeStates = []NodeState{NodeBooting, NodeAttested, NodeUnlocked, NodeFailed}

// EventNodeStatus is the timeline event of a node's own report.
const EventNodeStatus EventKind = "node-status"

// Limits of a node report.
const (
	MaxNodeClass  = 64
	MaxNodeDetail = 200
)

// NodeReport is one report a node made about itself.
type NodeReport struct {
	State NodeState `json:"state"`
	// Class is attestd's failure class (its exit class name), for failed.
	Class  string `json:"class,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Validate names the first bad field.
func (r *NodeReport) Validate() error {
	if !slices.Contains(NodeStates, r.State) {
		return fieldErr("state", "%q is not one of booting, attested, unlocked, failed", r.State)
	}
	if len(r.Class) > MaxNodeClass || strings.ContainsFunc(r.Class, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
	}) {
		return fieldErr("class", "want at most %d of [A-Za-z0-9._-]", MaxNodeClass)
	}
	if r.Class != "" && r.State != NodeFailed {
		return fieldErr("class", "only a failed report has a class")
	}
	// Characters, not bytes: the limit is what an operator reads. Control
	// characters would let a node forge extra lines in logs and terminals.
	if utf8.RuneCountInString(r.Detail) > MaxNodeDetail || !utf8.ValidString(r.Detail) ||
		strings.ContainsFunc(r.Detail, unicode.IsControl) {
		return fieldErr("detail", "want at most %d printable UTF-8 characters", MaxNodeDetail)
	}
	return nil
}

// ErrUnknownSource is NodeStatus's answer for an address that is not the
// lease of an accepted machine.
var ErrUnknownSource = fmt.Errorf("%w: no accepted machine holds this address", ErrNotFound)

// NodeStatus records a report from the node at ip. The machine is the one
// whose DHCP lease, acknowledged since this process started, holds ip
// (LearnAddress) — never a MAC the node names, so a node can report only
// about itself — and it must be accepted. Guessed addresses (transfers
// attributed by file, proxy mode) do not count. attested and unlocked move
// the machine to attested (unless the cluster already reported it joined),
// failed to failed, booting only adds the event.
func (s *Store) NodeStatus(ip netip.Addr, r NodeReport) (Machine, error) {
	if err := r.Validate(); err != nil {
		return Machine{}, err
	}
	ip = ip.Unmap()
	s.mu.Lock()
	mac, ok := s.ipMAC[ip]
	s.mu.Unlock()
	if !ok || !ip.IsValid() {
		return Machine{}, ErrUnknownSource
	}
	var m Machine
	err := s.write(func(tx *bolt.Tx) error {
		now := s.opts.Now()
		var err error
		m, err = getMachine(tx, mac)
		if errors.Is(err, ErrNotFound) {
			return ErrUnknownSource
		}
		if err != nil {
			return err
		}
		if m.State == Discovered {
			return ErrUnknownSource
		}
		var to State
		switch r.State {
		case NodeAttested, NodeUnlocked:
			if m.State != Joined {
				to = Attested
			}
		case NodeFailed:
			to = Failed
		}
		if to != "" && to != m.State {
			m.State, m.StateSince = to, now
		}
		detail := string(r.State)
		if r.Class != "" {
			detail += " (" + r.Class + ")"
		}
		if r.Detail != "" {
			detail += ": " + r.Detail
		}
		if err := s.appendEvent(tx, Event{Time: now, MAC: mac, Kind: EventNodeStatus, Detail: detail,
			Remote: ip.String(), State: to}); err != nil {
			return err
		}
		m.IP = ip.String()
		return putMachine(tx, &m)
	})
	if err != nil {
		if errors.Is(err, ErrUnknownSource) {
			return Machine{}, err
		}
		return Machine{}, fmt.Errorf("inventory: node status from %s: %w", ip, err)
	}
	s.events.WithLabelValues(string(EventNodeStatus)).Inc()
	return m, nil
}
