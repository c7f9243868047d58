package attest

import (
	"errors"
	"fmt"
)

// Class is the failure class of a denial. Callers tell classes apart for
// metrics and logs; the remote peer only ever sees a generic denial.
type Class string

// Failure classes, in the order the protocol checks them (ARCHITECTURE §4).
const (
	// ClassMalformed: evidence could not be parsed, is truncated, oversized
	// or lacks a part.
	ClassMalformed Class = "malformed"
	// ClassChain: no chain of trust to a pinned root (forged chain, root
	// taken from the evidence, bad signature, wrong product, EK from an
	// unpinned vendor, AK not proven by credential activation).
	ClassChain Class = "chain"
	// ClassRevoked: a certificate in the chain is on a revocation list.
	ClassRevoked Class = "revoked"
	// ClassCollateral: collateral is missing, expired or not yet valid.
	ClassCollateral Class = "collateral"
	// ClassTCB: the TCB is below the minimum, out of date or inconsistent
	// (VCEK TCB ≠ report TCB).
	ClassTCB Class = "tcb"
	// ClassPolicy: platform policy violated (debug, VMPL, migration agent,
	// TD attributes, hash bank).
	ClassPolicy Class = "policy"
	// ClassBinding: the report data does not commit to this session (old
	// nonce, other connection, other cluster or role, other claims).
	ClassBinding Class = "binding"
	// ClassMeasurement: a measurement differs from the reference values, or
	// the event log does not replay to the quoted registers.
	ClassMeasurement Class = "measurement"
	// ClassProtocol: the peer broke the exchange (wrong order, time-out,
	// oversized message, unattested peer).
	ClassProtocol Class = "protocol"
	// ClassInternal: the verifier itself failed (configuration, I/O).
	ClassInternal Class = "internal"
)

// Classes lists every class, for metrics that pre-declare their labels.
var Classes = []Class{ClassMalformed, ClassChain, ClassRevoked, ClassCollateral, ClassTCB,
	ClassPolicy, ClassBinding, ClassMeasurement, ClassProtocol, ClassInternal}

// Error is a denial: a class for metrics and a precise reason for the log.
type Error struct {
	Class Class
	Err   error
}

func (e *Error) Error() string { return string(e.Class) + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Deny wraps err as a denial of class c. An err that is already a denial
// keeps its inner class.
func Deny(c Class, err error) error {
	var d *Error
	if errors.As(err, &d) {
		return err
	}
	return &Error{Class: c, Err: err}
}

// Denyf is Deny with a formatted reason.
func Denyf(c Class, format string, args ...any) error {
	return Deny(c, fmt.Errorf(format, args...))
}

// ClassOf returns the class of a denial, ClassInternal for any other error and
// "" for nil.
func ClassOf(err error) Class {
	if err == nil {
		return ""
	}
	var d *Error
	if errors.As(err, &d) {
		return d.Class
	}
	return ClassInternal
}

// ErrDenied is what a remote peer is told: nothing about why.
var ErrDenied = errors.New("attestation denied")
