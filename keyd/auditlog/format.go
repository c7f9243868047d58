package auditlog

import "github.com/palisade-cc/palisade/internal/admissionlog"

// The log's format and client-side checks live in internal/admissionlog,
// shared with the owner's verifier; these names keep keyd's callers short.

type (
	// Checkpoint is a signed "origin has size leaves with this root".
	Checkpoint = admissionlog.Checkpoint
	// Record is one entry of the log.
	Record = admissionlog.Record
	// Type is the kind of a record.
	Type = admissionlog.Type
)

// Record types.
const (
	TypeInit        = admissionlog.TypeInit
	TypeAdmission   = admissionlog.TypeAdmission
	TypeDenial      = admissionlog.TypeDenial
	TypeRevocation  = admissionlog.TypeRevocation
	TypeReplicaJoin = admissionlog.TypeReplicaJoin

	MaxRecordSize  = admissionlog.MaxRecordSize
	MaxProofHashes = admissionlog.MaxProofHashes
)

// Errors of the client-side checks.
var (
	ErrMalformed   = admissionlog.ErrMalformed
	ErrSignature   = admissionlog.ErrSignature
	ErrOrigin      = admissionlog.ErrOrigin
	ErrInclusion   = admissionlog.ErrInclusion
	ErrConsistency = admissionlog.ErrConsistency
	ErrFork        = admissionlog.ErrFork
	ErrRollback    = admissionlog.ErrRollback
)

// Parsers, checks and the signer.
var (
	ParseRecord       = admissionlog.ParseRecord
	ParseCheckpoint   = admissionlog.ParseCheckpoint
	VerifyCheckpoint  = admissionlog.VerifyCheckpoint
	VerifyInclusion   = admissionlog.VerifyInclusion
	VerifyConsistency = admissionlog.VerifyConsistency
	FormatProof       = admissionlog.FormatProof
	ParseProof        = admissionlog.ParseProof
	NewSigner         = admissionlog.NewSigner
)
